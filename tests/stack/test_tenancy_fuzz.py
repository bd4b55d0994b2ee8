"""Fuzzing that can find a tenancy hole: schemathesis drives every operation of the served
`/openapi.json` as one API key (Bob) against a world where another key (Alice) owns a task,
a subscription, a delivery and a default secret, with a running worker and private webhook
addresses refused. No answer may be a 5xx, and no answer to Bob may carry anything of Alice's.

Nothing leaves this machine: every webhook URL the fuzzer would make acceptable is rewritten to
this machine's own host name, which resolves (from /etc/hosts) to a private address that the
SSRF guard refuses at delivery time.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, status_code_conformance

from service.routes.openapi import spec
from service.webhooks.ssrf import (
    UnsafeWebhookURL,
    check_url_syntax,
    is_forbidden_address,
)
from tests.stack.conftest import Simulator, Stack, wait_for
from tests.stack.fuzzing import without_framing_headers
from tests.stack.receivers import deliveries_of
from tests.stack.stacks import owned_stack

pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(900)]

ALICE, BOB = "fuzz-key-alice-123456", "fuzz-key-bob-654321"
EXAMPLES = 200
# Alice's ids and secrets: none may ever appear in an answer to Bob (filled by the fixture).
ALICE_THINGS: dict[str, str] = {}


def local_host() -> str:
    """This machine's name, if it resolves (without DNS) to an address the SSRF guard refuses."""
    name = socket.gethostname()
    addresses = {info[4][0] for info in socket.getaddrinfo(name, 80, proto=socket.IPPROTO_TCP)}
    if not addresses or not all(is_forbidden_address(ipaddress.ip_address(a)) for a in addresses):
        pytest.skip(f"{name} does not resolve to a private address here; nothing safe to point webhooks at")
    return name


HOOK = f"http://{socket.gethostname()}:9/hook"


@pytest.fixture(scope="module")
def tenants(simulator: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    simulator.reset()
    local_host()
    env = {
        "KLING_RELAY_API_KEYS": f"{ALICE},{BOB}",
        "ALLOW_PRIVATE_WEBHOOKS": "false",
        "TASK_CREATE_RATE_PER_MIN": "0",
        "REPLAY_RATE_PER_HOUR": "0",
    }
    with owned_stack(tmp_path_factory.mktemp("tenancy-fuzz"), simulator, env) as owned:
        with owned.stack.client(ALICE) as alice:
            sub = alice.post("/v1/subscriptions", json={"url": HOOK})
            assert sub.status_code == 201, sub.text
            task = alice.post("/v1/tasks", json={"prompt": "alice's own", "provider": "apikley", "webhook_url": HOOK})
            assert task.status_code == 202, task.text
            [delivery, *_] = wait_for(lambda: deliveries_of(alice, sub.json()["id"]), what="a delivery of Alice's")
            ALICE_THINGS.update(
                task_id=task.json()["id"],
                sub_id=sub.json()["id"],
                delivery_id=delivery["id"],
                secret=sub.json()["secret"],
                default_secret=alice.get("/v1/webhooks/default/secret").json()["secret"],
            )
        yield owned.stack


def aim_at_alice(context: Any, path: dict[str, Any] | None) -> Any:
    """Most of the time, aim a path parameter at one of Alice's things."""
    if not path:
        return st.just(path)
    real = {name: ALICE_THINGS[name] for name in path if name in ALICE_THINGS}
    return st.sampled_from([path, {**path, **real}, {**path, **real}]) if real else st.just(path)


def keep_webhooks_home(context: Any, body: Any) -> Any:
    """Rewrite any webhook URL the service would accept to this machine's own name."""
    if not isinstance(body, dict):
        return st.just(body)
    mended = dict(body)
    for field in ("url", "webhook_url"):
        value = mended.get(field)
        if isinstance(value, str):
            try:
                check_url_syntax(value, allow_private=False)
            except UnsafeWebhookURL:
                continue  # refused at the door: harmless
            mended[field] = HOOK
    return st.just(mended)


def no_cross_key_read(ctx: Any, response: Any, case: Any) -> bool | None:
    leaked = sorted(name for name, value in ALICE_THINGS.items() if value and value in response.text)
    if leaked:
        raise AssertionError(
            f"Bob was shown Alice's {', '.join(leaked)}: {case.method} {case.formatted_path} → {response.status_code}"
        )
    return None


# Event streams never end by themselves: tests/stack/test_streams.py reads them instead.
schema = schemathesis.openapi.from_dict(spec()).exclude(path_regex=r"/stream$")
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
schema.hook("flatmap_path_parameters")(aim_at_alice)
schema.hook("flatmap_body")(keep_webhooks_home)
schema.hook("map_headers")(without_framing_headers)


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_another_keys_requests_never_get_a_5xx_nor_anything_of_its_data(case: Any, tenants: Stack) -> None:
    case.call_and_validate(
        base_url=tenants.url,
        headers={"Authorization": f"Bearer {BOB}"},
        checks=[not_a_server_error, status_code_conformance, no_cross_key_read],
    )
