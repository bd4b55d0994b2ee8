"""The object graph shared by the web app and the workers, built once from the settings."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property

from prometheus_client import CollectorRegistry
from redis import Redis
from redis.client import Pipeline

from service.auth import Keys
from service.cas import CompareAndSet, recorded
from service.domain.recovery import Deadlines
from service.domain.storage import RetryRules
from service.domain.submission import SubmitPolicy
from service.domain.tasks import ProviderName, Task
from service.domain.tokens import callback_token
from service.domain.transition import ProviderUpdate, Transition
from service.jobs import Jobs
from service.keys import confirm_key
from service.live.log import LogLimits
from service.metrics_http import web_registry
from service.providers import registry
from service.providers.base import ProviderClient
from service.providers.http import ProviderHttp
from service.reachability import callbacks_unreachable
from service.redis_client import connect_redis
from service.settings import Settings
from service.storage import Storage, open_storage
from service.store import Decide, TaskStore
from service.telemetry import observe_transition
from service.webhooks.deliveries import DeliveryStore
from service.webhooks.replays import PendingReplays
from service.webhooks.store import SubscriptionStore


class ProviderNotConfigured(RuntimeError):
    """A task asked for a provider whose API key (or base URL) is not set."""


@dataclass
class Runtime:
    settings: Settings
    redis: Redis
    store: TaskStore
    jobs: Jobs
    # Where our copies of finished videos are kept (None: STORAGE_URL=none, no copies).
    storage: Storage | None = None
    _providers: dict[str, ProviderClient] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> Runtime:
        redis, aredis = connect_redis(settings)
        storage = open_storage(settings.storage_url)
        store = TaskStore(
            redis,
            aredis,
            retention_s=settings.task_retention_s,
            limits=LogLimits.from_settings(settings),
            stores_videos=storage is not None,
        )
        return cls(settings=settings, redis=redis, store=store, jobs=Jobs(redis), storage=storage)

    def __post_init__(self) -> None:
        s = self.settings
        # In the registry's order: the order `auto` tries them in.
        self.configured: tuple[ProviderName, ...] = tuple(spec.name for spec in registry.all() if spec.configured(s))
        self.submit_policy = SubmitPolicy(
            retry_delays_s=tuple(s.submit_retry_delays_s), configured=self.configured, resubmit_unconfirmed=s.resubmit_unconfirmed
        )
        self.deadlines = Deadlines(
            task_s=s.task_deadline_s,
            unconfirmed_s=s.submit_unconfirmed_s,
            late_window_s=s.late_result_window_s,
            late_poll_s=s.late_poll_s,
        )
        # Why a callback-mode provider cannot call us back (None: they can); then we poll from the first check.
        self.callbacks_unreachable = callbacks_unreachable(s)
        self._cas = CompareAndSet(self.redis)
        self.keys = Keys(s.kling_relay_api_keys, s.kling_relay_admin_keys)
        self.subscriptions = SubscriptionStore(self.redis, event_ttl_s=s.webhook_log_ttl_s, limits=LogLimits.from_settings(s))
        self.deliveries = DeliveryStore(self.redis, ttl_s=s.webhook_log_ttl_s, lease_s=s.webhook_lease_s)
        self.replays = PendingReplays(self.redis)
        self.storage_rules = RetryRules(
            initial_s=s.storage_retry_initial_s,
            factor=s.storage_retry_factor,
            max_s=s.storage_retry_max_s,
            default_url_ttl_s=s.storage_url_ttl_s,
        )

    @property
    def storage_job_timeout_s(self) -> int:
        # RQ's limit on a store job: STORAGE_TIMEOUT_S to download, as long again to keep the
        # copy (an upload to S3), and a little for the Redis write.
        return int(2 * self.settings.storage_timeout_s) + 5

    def storage_deadline_s(self, delay_s: float) -> float:
        """When a storage try starting in `delay_s` is presumed lost (its worker killed): a
        duplicate try is harmless, so this is the job's limit plus JOB_GRACE_S."""
        return time.time() + delay_s + self.storage_job_timeout_s + self.settings.job_grace_s

    @cached_property
    def metrics_registry(self) -> CollectorRegistry:
        """What `GET /metrics` serves (built on first use: workers serve theirs differently)."""
        return web_registry(self.redis)

    def provider(self, name: ProviderName) -> ProviderClient:
        if name not in self._providers:
            s = self.settings
            spec = registry.get(name)
            api_key, base_url = spec.api_key(s), spec.base_url(s)
            if api_key is None:
                raise ProviderNotConfigured(f"{spec.settings_prefix}_API_KEY is not set")
            if base_url is None:
                raise ProviderNotConfigured(f"{spec.settings_prefix}_BASE_URL is not set")
            self._providers[name] = spec.client(s, ProviderHttp(base_url, api_key, s.provider_timeout_s))
        return self._providers[name]

    def callback_url(self, task_id: str, provider: ProviderName) -> str:
        token = callback_token(self.settings.callback_secret or "", task_id, provider)
        return f"{self.settings.public_base_url}/callbacks/{provider}/{task_id}/{token}"

    def first_check_s(self, task: Task) -> float:
        """After a submit, how long until we look at the task ourselves."""
        return registry.get(task.provider).first_check_s(self.settings, self.callbacks_unreachable is None)

    def apply(self, task_id: str, update: ProviderUpdate) -> Transition | None:
        """Apply a provider report (polls, our own decisions); no-op if it changes nothing."""
        return observe_transition(self.store.apply(task_id, update))

    def change(self, task_id: str, decide: Decide) -> tuple[Transition | None, Task | None]:
        """`TaskStore.change`, with the transition counted and logged."""
        transition, written = self.store.change(task_id, decide)
        return observe_transition(transition), written

    def request_confirmation(self, task_id: str) -> bool:
        """Poll the provider about this task soon, unless a poll for that is already pending:
        however many callbacks claim an end (forged ones included), one provider call at a time."""
        key = confirm_key(task_id)

        def build(pipe: Pipeline) -> None:
            pipe.set(key, "1", ex=max(int(self.settings.job_grace_s), 1))
            self.jobs.poll(task_id, pipeline=pipe)

        return self._cas(key, None, recorded(self.redis, build))
