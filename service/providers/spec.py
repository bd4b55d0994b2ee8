"""What a provider declares about itself, in one place: a `ProviderSpec` its module exports.

Pure data and pure functions: no httpx, no Redis, so the domain can read limits and state
mappings from the registry. The one piece of I/O, the client, is built by a factory that is
handed its HTTP connection (`service.providers.http.ProviderHttp`) by the process that needs it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from service.domain.status import TaskStatus
from service.domain.tasks import PromptLimits, ProviderName

if TYPE_CHECKING:
    from service.providers.base import Http, ProviderClient
    from service.settings import Settings

# callback: the provider calls us back with its news, and we poll only after a grace period.
# poll: we poll from the first check (a webhook, if the provider sends one, is only a hint).
Mode = Literal["callback", "poll"]


class UnknownState(ValueError):
    """A provider reported a state it does not document."""


def poll_from_the_start(settings: Settings, callbacks_reachable: bool) -> float:
    """The first check of a poll-mode provider: as soon as the poll schedule starts."""
    return settings.poll_initial_s


@dataclass(frozen=True)
class CallbackDoc:
    """How the OpenAPI document describes a provider's receiver at /callbacks/{name}/{task_id}/{token}."""

    summary: str
    schema_name: str
    schema: dict[str, Any]
    headers: Sequence[dict[str, Any]] = ()


@dataclass(frozen=True)
class ProviderSpec:
    name: ProviderName
    # How messages and logs spell it ("Apikley").
    title: str
    limits: PromptLimits
    mode: Mode
    # Its settings are the fields of `Settings` named `{prefix}_*` (environment `{PREFIX}_*`):
    # at least `{prefix}_api_key` and `{prefix}_base_url`.
    settings_prefix: str
    # The provider's task states and what each means for our task.
    states: Mapping[str, TaskStatus]
    # Settings and an HTTP connection to the provider's API → the client that submits and fetches.
    client: Callable[[Settings, Http], ProviderClient]
    # Settings and whether providers can call us back → seconds from submit to our first look.
    first_check_s: Callable[[Settings, bool], float] = poll_from_the_start
    callback: CallbackDoc | None = field(default=None, compare=False)

    def setting(self, settings: Settings, name: str) -> Any:
        """The provider's own setting `name` (`api_key` reads `{PREFIX}_API_KEY`); None if absent."""
        return getattr(settings, f"{self.settings_prefix}_{name}".lower(), None)

    def api_key(self, settings: Settings) -> str | None:
        value = self.setting(settings, "api_key")
        return value if isinstance(value, str) and value else None

    def base_url(self, settings: Settings) -> str | None:
        value = self.setting(settings, "base_url")
        return value if isinstance(value, str) and value else None

    def configured(self, settings: Settings) -> bool:
        """Whether this server has credentials for the provider."""
        return self.api_key(settings) is not None

    def status_of(self, state: object) -> TaskStatus:
        """Our status for a state the provider reports; UnknownState for one it does not document."""
        status = self.states.get(state) if isinstance(state, str) else None
        if status is None:
            raise UnknownState(f"unknown {self.title} state {state!r}")
        return status
