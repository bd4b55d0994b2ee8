"""The object graph shared by the web app and the workers, built once from the settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from redis import Redis

from service.domain.tasks import ProviderName, Task
from service.domain.tokens import callback_token
from service.domain.transition import ProviderUpdate, Transition
from service.jobs import Jobs
from service.metrics import observe_transition
from service.providers.apikley import ApikleyClient
from service.providers.base import ProviderClient
from service.providers.http import make_client
from service.providers.novita import NovitaClient
from service.redis_client import connect_redis
from service.settings import Settings
from service.store import TaskStore


class ProviderNotConfigured(RuntimeError):
    """A task asked for a provider whose API key is not set."""


@dataclass
class Runtime:
    settings: Settings
    redis: Redis
    store: TaskStore
    jobs: Jobs
    _providers: dict[str, ProviderClient] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> Runtime:
        redis, aredis = connect_redis(settings)
        return cls(settings=settings, redis=redis, store=TaskStore(redis, aredis, retention_s=settings.task_retention_s), jobs=Jobs(redis))

    def provider(self, name: ProviderName) -> ProviderClient:
        if name not in self._providers:
            s = self.settings
            if name == "apikley":
                if not s.apikley_api_key:
                    raise ProviderNotConfigured("APIKLEY_API_KEY is not set")
                self._providers[name] = ApikleyClient(make_client(s.apikley_base_url, s.apikley_api_key, s.provider_timeout_s))
            else:
                if not s.novita_api_key:
                    raise ProviderNotConfigured("NOVITA_API_KEY is not set")
                self._providers[name] = NovitaClient(make_client(s.novita_base_url, s.novita_api_key, s.provider_timeout_s))
        return self._providers[name]

    def callback_url(self, task_id: str) -> str:
        token = callback_token(self.settings.callback_secret or "", task_id)
        return f"{self.settings.public_base_url}/callbacks/apikley/{task_id}/{token}"

    def first_check_s(self, task: Task) -> float:
        """After a submit, how long until we look at the task ourselves."""
        if task.provider == "apikley":
            return self.settings.apikley_callback_grace_s
        return self.settings.poll_initial_s

    def apply(self, task_id: str, update: ProviderUpdate) -> Transition | None:
        """Apply a provider report (polls, submit outcomes); no-op if it changes nothing."""
        return observe_transition(self.store.apply(task_id, update))
