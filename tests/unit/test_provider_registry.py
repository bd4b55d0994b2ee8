"""The provider registry: a third provider is one module's `ProviderSpec` and one `register` line,
and every place that picks, validates, documents or follows providers takes it from there.

The dummy provider below is all such a module holds: its limits, its mode, its settings (fields
`dummy_*`), its client and its states. Its API is an in-memory stand-in for the provider's server.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from service.domain.status import TaskStatus
from service.domain.submission import NoProviderFits, choose_provider, failover_target
from service.domain.tasks import (
    PromptLimits,
    Task,
    TaskInput,
    TaskRequest,
    TaskResult,
    limit_violations,
)
from service.domain.transition import ProviderUpdate
from service.providers import apikley, novita, registry
from service.providers.base import Http, ProviderError
from service.providers.spec import ProviderSpec, UnknownState
from service.reachability import callbacks_unreachable
from service.routes.openapi import build_spec
from service.settings import Settings, SettingsError, load_settings

NOW = "2025-01-01T00:00:00.000Z"

# --- the dummy provider's module -------------------------------------------------------------------

STATES = {"PENDING": TaskStatus.SUBMITTED, "BUSY": TaskStatus.RUNNING, "DONE": TaskStatus.SUCCEEDED, "BROKEN": TaskStatus.FAILED}


class DummyClient:
    name = "dummy"

    def __init__(self, http: Http) -> None:
        self._http = http

    def submit(self, task: Task, callback_url: str) -> str:
        status, body = self._http.send("POST", "/jobs", json={"text": task.input.prompt})
        if status != 201:
            raise ProviderError("provider_error", f"HTTP {status}", retryable=status >= 500)
        return str(body["id"])

    def fetch(self, provider_task_id: str, *, unfinished_at: datetime) -> ProviderUpdate:
        _, body = self._http.send("GET", f"/jobs/{provider_task_id}")
        status = SPEC.status_of(body["state"])
        if status is TaskStatus.SUCCEEDED:
            return ProviderUpdate(status=status, result=TaskResult(video_url=body["url"]))
        return ProviderUpdate(status=status)


SPEC = ProviderSpec(
    name="dummy",
    title="Dummy",
    # Longer negative prompts than either real provider takes, shorter prompts than both.
    limits=PromptLimits(prompt=1000, negative_prompt=4000),
    mode="poll",
    settings_prefix="DUMMY",
    states=STATES,
    client=lambda settings, http: DummyClient(http),
)


class DummySettings(Settings):
    """The settings a real third provider adds to `Settings`, named by its prefix."""

    dummy_api_key: str | None = None
    dummy_base_url: str = "http://dummy.invalid"


class DummyApi:
    """The dummy provider's server, in memory: jobs finish on the second look."""

    def __init__(self) -> None:
        self.jobs: dict[str, int] = {}

    def send(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        if method == "POST" and path == "/jobs":
            job_id = f"job-{len(self.jobs) + 1}"
            self.jobs[job_id] = 0
            return 201, {"id": job_id}
        job_id = path.rsplit("/", 1)[1]
        self.jobs[job_id] += 1
        if self.jobs[job_id] < 2:
            return 200, {"state": "BUSY"}
        return 200, {"state": "DONE", "url": f"https://videos.dummy.invalid/{job_id}.mp4"}


@pytest.fixture
def dummy() -> Iterator[ProviderSpec]:
    registry.register(SPEC)
    try:
        yield SPEC
    finally:
        registry.unregister(SPEC.name)


# --- the registry ----------------------------------------------------------------------------------


def test_the_real_providers_are_registered_in_order_of_preference() -> None:
    assert registry.all() == (apikley.SPEC, novita.SPEC)
    assert registry.names() == ("apikley", "novita")
    assert (apikley.SPEC.mode, novita.SPEC.mode) == ("callback", "poll")


def test_a_registered_provider_is_listed_after_the_others_and_gone_once_unregistered(dummy: ProviderSpec) -> None:
    assert registry.names() == ("apikley", "novita", "dummy")
    assert registry.get("dummy") is dummy
    registry.unregister("dummy")
    assert registry.names() == ("apikley", "novita")
    with pytest.raises(registry.UnknownProvider):
        registry.get("dummy")


@pytest.mark.parametrize("name", ["apikley", "auto"])
def test_a_name_is_registered_once_and_auto_is_never_one(name: str) -> None:
    with pytest.raises(ValueError, match="taken"):
        registry.register(replace(SPEC, name=name))
    assert registry.names() == ("apikley", "novita")


# --- validation and the auto choice ----------------------------------------------------------------


def test_a_request_may_name_a_registered_provider_and_only_those(dummy: ProviderSpec) -> None:
    providers = {"providers": registry.names()}
    assert TaskRequest.model_validate({"prompt": "p", "provider": "dummy"}, context=providers).provider == "dummy"
    with pytest.raises(ValidationError) as refused:
        TaskRequest.model_validate({"prompt": "p", "provider": "other"}, context=providers)
    assert refused.value.errors()[0]["msg"] == "Input should be 'apikley', 'novita', 'dummy' or 'auto'"


def test_the_provider_limits_are_its_own(dummy: ProviderSpec) -> None:
    fine_for_apikley = TaskInput(prompt="p" * 1001, negative_prompt="n" * 3000)
    assert limit_violations(fine_for_apikley, "dummy", dummy.limits) == {"prompt": "must be at most 1000 characters for dummy"}
    assert set(limit_violations(fine_for_apikley, "apikley", apikley.SPEC.limits)) == {"negative_prompt"}


def test_auto_picks_the_dummy_when_only_it_fits(dummy: ProviderSpec) -> None:
    long_negative = TaskInput(prompt="p", negative_prompt="n" * 3000)  # over Apikley's 500 and Novita's 2500
    everyone = ("apikley", "novita", "dummy")
    assert choose_provider(long_negative, default="apikley", configured=everyone) == "dummy"
    assert choose_provider(TaskInput(prompt="p"), default="apikley", configured=everyone) == "apikley"
    assert choose_provider(TaskInput(prompt="p"), default="dummy", configured=everyone) == "dummy"
    with pytest.raises(NoProviderFits) as none_fits:
        choose_provider(long_negative, default="apikley", configured=("apikley", "novita"))
    assert set(none_fits.value.fields) == {"negative_prompt"}


def test_an_auto_task_fails_over_to_the_dummy_last(dummy: ProviderSpec) -> None:
    task = Task(id="task_x", provider="apikley", input=TaskInput(prompt="p"), created_at=NOW, updated_at=NOW)
    assert failover_target(task, configured=("apikley", "novita", "dummy")) == "novita"
    assert failover_target(task, configured=("apikley", "dummy")) == "dummy"


def test_the_dummy_may_be_the_default_provider_while_registered(dummy: ProviderSpec) -> None:
    assert load_settings(_env_file=None, default_provider="dummy").default_provider == "dummy"
    registry.unregister("dummy")
    with pytest.raises(SettingsError, match="DEFAULT_PROVIDER: Input should be 'apikley' or 'novita'"):
        load_settings(_env_file=None, default_provider="dummy")


# --- settings, client, first check, states ---------------------------------------------------------


def test_its_settings_are_the_fields_named_by_its_prefix(dummy: ProviderSpec) -> None:
    assert not dummy.configured(load_settings(_env_file=None))  # Settings without dummy_* fields
    settings = DummySettings(_env_file=None, dummy_api_key="secret")  # type: ignore[call-arg]
    assert dummy.configured(settings)
    assert (dummy.api_key(settings), dummy.base_url(settings)) == ("secret", "http://dummy.invalid")
    real = load_settings(_env_file=None, apikley_api_key="k")
    assert (apikley.SPEC.configured(real), novita.SPEC.configured(real)) == (True, False)
    assert apikley.SPEC.base_url(real) == "https://api.apikley.ru"


def test_its_client_submits_and_follows_a_task_to_the_end(dummy: ProviderSpec) -> None:
    settings = DummySettings(_env_file=None, dummy_api_key="secret")  # type: ignore[call-arg]
    client = dummy.client(settings, DummyApi())
    task = Task(id="task_x", provider="dummy", input=TaskInput(prompt="p"), created_at=NOW, updated_at=NOW)
    job = client.submit(task, "http://relay.invalid/callbacks/dummy/task_x/token")
    seen = datetime(2025, 1, 1, tzinfo=UTC)
    assert client.fetch(job, unfinished_at=seen).status is TaskStatus.RUNNING
    done = client.fetch(job, unfinished_at=seen)
    assert done.status is TaskStatus.SUCCEEDED and done.result is not None
    assert done.result.video_url == "https://videos.dummy.invalid/job-1.mp4"


def test_the_first_check_follows_each_providers_mode(dummy: ProviderSpec) -> None:
    settings = load_settings(_env_file=None, poll_initial_s=7, apikley_callback_grace_s=300)
    # Poll mode: from the start, whether or not callbacks could reach us.
    assert dummy.first_check_s(settings, True) == dummy.first_check_s(settings, False) == 7
    assert novita.SPEC.first_check_s(settings, True) == 7
    # Callback mode: the grace, unless callbacks cannot reach us.
    assert apikley.SPEC.first_check_s(settings, True) == 300
    assert apikley.SPEC.first_check_s(settings, False) == 7


def test_only_callback_mode_providers_are_warned_about(dummy: ProviderSpec) -> None:
    loopback = {"public_base_url": "http://127.0.0.1:8000"}
    assert (
        callbacks_unreachable(
            DummySettings(_env_file=None, dummy_api_key="k", dummy_base_url="https://dummy.example", **loopback)
        )
        is None
    )  # type: ignore[call-arg]
    warning = callbacks_unreachable(load_settings(_env_file=None, apikley_api_key="k", **loopback))
    assert warning is not None and "Apikley tasks are followed by polling alone" in warning


@pytest.mark.parametrize(("state", "status"), [*STATES.items()])
def test_its_states_map_onto_ours(dummy: ProviderSpec, state: str, status: TaskStatus) -> None:
    assert dummy.status_of(state) is status


def test_a_state_it_does_not_document_is_named(dummy: ProviderSpec) -> None:
    with pytest.raises(UnknownState, match="unknown Dummy state 'LOST'"):
        dummy.status_of("LOST")
    with pytest.raises(UnknownState, match="unknown Apikley state None"):
        apikley.SPEC.status_of(None)


# --- the API document ------------------------------------------------------------------------------


def test_the_api_document_offers_the_registered_providers(dummy: ProviderSpec) -> None:
    document = build_spec()
    schemas = document["components"]["schemas"]
    assert schemas["TaskRequest"]["properties"]["provider"]["enum"] == ["apikley", "novita", "dummy", "auto"]
    assert schemas["Task"]["properties"]["provider"]["enum"] == ["apikley", "novita", "dummy"]
    # A poll-mode provider without a callback document gets no receiver.
    callbacks = sorted(path for path in document["paths"] if path.startswith("/callbacks/"))
    assert callbacks == ["/callbacks/apikley/{task_id}/{token}", "/callbacks/novita/{task_id}/{token}"]
