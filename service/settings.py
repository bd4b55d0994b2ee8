"""The one settings object, read from the environment (and an optional `.env` file) once."""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.domain.tasks import ProviderName, not_one_of
from service.providers import registry
from service.storage import check_storage_url


class SettingsError(RuntimeError):
    """The environment is missing or has a bad value for a setting; the message names it."""


def _csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _floats(value: object) -> object:
    if isinstance(value, str):
        return [float(part) for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    redis_url: str | None = None
    # Redis behind Sentinel: "host:port,host:port" of the sentinels and the master's name. With
    # these set, the master is discovered (and re-discovered on failover) through the sentinels;
    # REDIS_URL, if also set, supplies only the database, credentials and TLS for the master.
    redis_sentinels: Annotated[list[str], NoDecode] = Field(default_factory=list)
    redis_sentinel_master: str = "mymaster"
    public_base_url: str = "http://127.0.0.1:8000"
    host: str = "127.0.0.1"
    port: int = 8000
    kling_relay_api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Keys that see and manage every key's tasks and subscriptions (and data from before keys owned any).
    kling_relay_admin_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    callback_secret: str | None = None
    # A dashboard sign-in lasts this long; the server refuses older session cookies.
    dashboard_session_s: int = Field(default=12 * 3600, gt=0)

    # Each provider's settings are named by its spec's prefix (service/providers/registry.py).
    default_provider: ProviderName = "apikley"

    apikley_api_key: str | None = None
    apikley_base_url: str = "https://api.apikley.ru"
    # A terminal callback is only believed after Get Task Details confirms it.
    apikley_confirm_callbacks: bool = True
    # kie.ai's "webhook verification": when set, a callback must also carry a valid
    # X-Webhook-Signature over "{taskId}.{X-Webhook-Timestamp}" (HMAC-SHA256, base64).
    apikley_webhook_hmac_key: str | None = None
    # With no terminal callback this long after submit, we poll Get Task Details ourselves.
    apikley_callback_grace_s: float = 300.0

    novita_api_key: str | None = None
    novita_base_url: str = "https://api.novita.ai"
    # Ask Novita for a per-task result webhook (`extra.webhook`): a hint that makes us poll at once,
    # and the only way the task id of a submit whose answer we never read can reach us.
    novita_webhooks: bool = True
    allow_private_webhooks: bool = False

    provider_timeout_s: float = 30.0
    # Seconds between submit attempts on a retryable provider answer; its length is the attempt cap.
    submit_retry_delays_s: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [2.0, 10.0, 30.0, 60.0, 120.0, 300.0]
    )
    # A running submit holds a lease its worker renews every third of this; a worker that dies
    # lets it lapse, and the sweep then picks the task up (within this plus SWEEP_INTERVAL_S).
    submit_lease_s: float = 10.0
    # A submit sent whose answer we never read (timeout, crash) waits this long for the provider's
    # callback to bring its task id, then fails as `submit_unconfirmed`. Kling 2.1 Master takes
    # minutes, half an hour at worst; a callback after the limit still delivers the result.
    submit_unconfirmed_s: float = 3600.0
    # Operator override: after an unknown outcome, submit again anyway (a second paid task is
    # possible; every attempt stays on the task and in /metrics). Off by default.
    resubmit_unconfirmed: bool = False
    # How long past its due time a queued or scheduled job may wait before the sweep presumes it
    # lost (Redis restarted without it) and makes another.
    job_grace_s: float = 120.0
    # How often the worker sweeps for tasks whose job was lost (crash, Redis restart).
    sweep_interval_s: float = 5.0
    # RQ declares a worker dead that has been silent this long.
    worker_ttl_s: int = 60

    # Poll schedule: the first delay, growth factor and cap between polls, plus the overall deadline.
    poll_initial_s: float = 5.0
    poll_factor: float = 1.5
    poll_max_s: float = 60.0
    task_deadline_s: float = 3600.0
    # After a failure we decided ourselves (deadline, unconfirmed submit), a task with a provider
    # task id is still polled every LATE_POLL_S for LATE_RESULT_WINDOW_S: a late result is kept.
    late_poll_s: float = 300.0
    late_result_window_s: float = 24 * 3600.0

    idempotency_ttl_s: int = 24 * 3600
    # A finished task, its events and its index entries are kept this long, then expire.
    task_retention_s: int = 7 * 24 * 3600
    max_body_bytes: int = 1024 * 1024
    # Task creations one API key may make in any 60 s (a sliding window); 0 turns the limit off.
    task_create_rate_per_min: int = Field(default=600, ge=0)
    # Replays one API key may start in any hour (each re-sends up to 10,000 deliveries); 0: no limit.
    replay_rate_per_hour: int = Field(default=30, ge=0)
    # Test events one API key may send in any 60 s (each is a delivery kept WEBHOOK_LOG_TTL_S); 0: no limit.
    test_event_rate_per_min: int = Field(default=60, ge=0)

    # Subscriber webhooks. One attempt (connect, send, first 1 KB of the answer) must end within this.
    webhook_timeout_s: float = 15.0
    # Wait before each attempt of one delivery round; its length is the attempt count (Svix's schedule).
    webhook_retry_schedule_s: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0]
    )
    # A subscription with no successful delivery for this long is disabled (Svix: 5 days).
    webhook_disable_after_s: float = 5 * 24 * 3600
    # After a secret rotation the old secret keeps signing (alongside the new) for this long.
    webhook_secret_grace_s: float = 24 * 3600
    # Deliveries and their attempt logs expire this long after their last change; replay reaches back as far.
    webhook_log_ttl_s: int = 30 * 24 * 3600
    # Simultaneous requests per worker process (one pooled client shared by all deliveries).
    webhook_concurrency: int = 256
    # An attempt not recorded this long after it started, or a fan-out whose worker's heartbeat is
    # this old, is presumed lost (worker killed) and is sent again.
    webhook_lease_s: float = 60.0

    # Live event streams (service/live/). An API key's events stay resumable (Last-Event-ID) on
    # `/v1/events/stream` for this long after its last event, up to this many of its latest events.
    stream_history_s: int = Field(default=24 * 3600, gt=0)
    stream_history_events: int = Field(default=1000, ge=10)
    # Every key's events, newest this many: what a web's reader catches up on after a Redis outage,
    # and what an admin's stream resumes from.
    stream_global_events: int = Field(default=10_000, ge=100)
    # An idle stream gets a `: ping` comment this often (proxies' idle timeouts; dead clients found).
    stream_heartbeat_s: float = Field(default=15.0, gt=0)
    # What `web` and `worker` log. INFO: a line per task event, callback, and request;
    # WARNING: problems only (the web's fastest: a callback's line is a sixth of its CPU).
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Our copy of each succeeded task's video (docs/storage.md). `file:///path`,
    # `s3://bucket/prefix` or `none` (no copies); unset: the folder `var/videos` under the
    # working directory. S3's endpoint and credentials: the usual AWS_* variables.
    storage_url: str | None = None
    # A download over this many bytes is refused (declared or counted).
    storage_max_bytes: int = Field(default=2 * 1024**3, gt=0)
    # One download try must end within this (connect, headers, the whole body).
    storage_timeout_s: float = Field(default=600.0, gt=0)
    # Failed tries are retried after initial × factor^n seconds, at most max, until the provider's
    # URL expires (its stated expiry, else STORAGE_URL_TTL_S after the success).
    storage_retry_initial_s: float = Field(default=10.0, gt=0)
    storage_retry_factor: float = Field(default=2.0, ge=1)
    storage_retry_max_s: float = Field(default=1800.0, gt=0)
    storage_url_ttl_s: float = Field(default=24 * 3600.0, gt=0)
    # A kept copy is deleted this long after it was kept (then `GET /v1/tasks/{id}/video` is 410).
    # As long as a finished task by default: past its task, a copy cannot be fetched by the API.
    storage_retention_s: int = Field(default=7 * 24 * 3600, gt=0)
    # S3's presigned GET URLs, to which the video route redirects, last this long.
    storage_presign_s: int = Field(default=300, gt=0)

    # The web's HTTP server (service/http_server.py). A request line and headers over this many bytes get 431.
    http_max_header_bytes: int = Field(default=32 * 1024, ge=1024)
    # A request head not complete this long after it began, or a body silent this long, is cut off (408).
    http_read_timeout_s: float = Field(default=10.0, gt=0)
    # Connections the web serves at once; a request on any connection past them gets 503.
    http_max_connections: int = Field(default=1000, ge=1)
    # An idle keep-alive connection is closed after this many seconds.
    http_keepalive_s: int = Field(default=5, ge=1)

    # `kling-relay worker` serves its own Prometheus /metrics here (unset: it serves none).
    worker_metrics_port: int | None = None
    worker_metrics_host: str = "127.0.0.1"

    @field_validator("kling_relay_api_keys", "kling_relay_admin_keys", "redis_sentinels", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        return _csv(value)

    @field_validator("redis_sentinels")
    @classmethod
    def _sentinel_addresses(cls, value: list[str]) -> list[str]:
        for address in value:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"{address!r} is not host:port")
        return value

    @field_validator("submit_retry_delays_s", "webhook_retry_schedule_s", mode="before")
    @classmethod
    def _split_delays(cls, value: object) -> object:
        return _floats(value)

    @field_validator("webhook_retry_schedule_s")
    @classmethod
    def _schedule_usable(cls, value: list[float]) -> list[float]:
        if not value or any(delay < 0 for delay in value):
            raise ValueError("must list at least one delay (the first attempt's), none negative")
        return value

    @field_validator("webhook_lease_s")
    @classmethod
    def _lease_outlasts_an_attempt(cls, value: float, info: ValidationInfo) -> float:
        # Otherwise the sweep would re-send deliveries whose attempt is still in flight.
        timeout = info.data.get("webhook_timeout_s")
        if timeout is not None and value <= timeout:
            raise ValueError(f"must be longer than WEBHOOK_TIMEOUT_S ({timeout:g} s)")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _level(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("storage_url")
    @classmethod
    def _storage_url(cls, value: str | None) -> str | None:
        return check_storage_url(value)

    @field_validator("default_provider")
    @classmethod
    def _registered(cls, value: str) -> str:
        if value not in registry.names():
            raise not_one_of(registry.names())
        return value

    @field_validator("public_base_url", "apikley_base_url", "novita_base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    def require(self, *names: str) -> None:
        """Fail fast, naming the variable, when a process needs a setting that is unset."""
        missing = [name.upper() for name in names if not getattr(self, name)]
        if "REDIS_URL" in missing and self.redis_sentinels:
            missing.remove("REDIS_URL")  # Sentinel tells us where Redis is
        if missing:
            raise SettingsError(f"missing required environment variable(s): {', '.join(missing)}")


def load_settings(**overrides: object) -> Settings:
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]).upper() if first["loc"] else "?"
        raise SettingsError(f"bad value for {name}: {first['msg']}") from exc


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once (workers and the app factory use this)."""
    return load_settings()
