"""What every provider client raises and returns, independent of the provider."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from service.domain.tasks import ProviderName, Task, TaskError, is_web_url
from service.domain.transition import ProviderUpdate


class ProviderError(Exception):
    """A provider refused or could not take a request.

    `retryable`: the same request may succeed later (rate limit, maintenance, 5xx, network).
    `provider_level`: the provider itself is unable to serve us (credits, maintenance, feature
    off, repeated 5xx, gateway pages), so `auto` tasks may fail over to the other provider.
    `outcome_unknown`: the request may have reached the provider and we never read its answer
    (a read timeout, a dropped connection): a submit may have created a paid task.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        retryable: bool,
        provider_code: str | None = None,
        provider_level: bool = False,
        outcome_unknown: bool = False,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retryable = retryable
        self.provider_code = provider_code
        self.provider_level = provider_level
        self.outcome_unknown = outcome_unknown

    def as_task_error(self) -> TaskError:
        return TaskError(code=self.code, message=self.message, provider_code=self.provider_code)


class InvalidCallback(ValueError):
    """A provider's callback body lacks what identifies its task; `field` names what is missing."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


def result_url_problem(url: str | None) -> TaskError | None:
    """Why a provider's reported result cannot be taken, or None: there must be a URL, and an
    http(s) one (subscribers, dashboards and downloads would follow anything else)."""
    if not url:
        return TaskError(code="no_result", message="provider reported success without a video URL")
    if not is_web_url(url):
        return TaskError(code="invalid_result_url", message="provider reported a result URL that is not http(s)")
    return None


class Http(Protocol):
    """A provider's API over HTTP (`service.providers.http.ProviderHttp`)."""

    def send(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        """(HTTP status, decoded JSON body or None); network trouble is a retryable ProviderError."""
        ...


class ProviderClient(Protocol):
    name: ProviderName

    def submit(self, task: Task, callback_url: str) -> str:
        """Create the provider task; returns the provider's task id."""
        ...

    def fetch(self, provider_task_id: str, *, unfinished_at: datetime) -> ProviderUpdate:
        """The provider's current view of a task.

        `unfinished_at` is the last moment the task was known to be unfinished: a provider that
        gives a video URL a lifetime without saying when it finished has its expiry dated from
        there, so `expires_at` is never later than the real expiry.
        """
        ...
