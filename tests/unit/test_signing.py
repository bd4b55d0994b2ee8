import base64
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from service.webhooks.signing import (
    InvalidSecret,
    SignatureError,
    generate_secret,
    sign,
    signature_header,
    verify,
    webhook_headers,
)

# The example from the Svix / Standard Webhooks docs.
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

BODY = b'{"id":"evt_1","type":"task.succeeded","data":{"id":"task_1","caption":"caf\xc3\xa9"}}'
OLD_SECRET = generate_secret()
NEW_SECRET = generate_secret()
SENT_AT = 1700000000


def test_generated_secret_is_whsec_with_24_random_bytes() -> None:
    secret = generate_secret()

    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 24
    assert generate_secret() != secret


def test_known_answer_vector_matches_standardwebhooks_byte_for_byte() -> None:
    reference = Webhook(VECTOR_SECRET).sign(
        VECTOR_ID, datetime.fromtimestamp(VECTOR_TIMESTAMP, tz=UTC), VECTOR_BODY.decode()
    )

    assert reference == VECTOR_SIGNATURE
    assert sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE


def test_standardwebhooks_accepts_our_headers_unmodified() -> None:
    headers = webhook_headers([NEW_SECRET], "evt_1", int(time.time()), BODY)

    assert Webhook(NEW_SECRET).verify(BODY, headers) == {
        "id": "evt_1",
        "type": "task.succeeded",
        "data": {"id": "task_1", "caption": "café"},
    }


@pytest.mark.parametrize("receiver_secret", [OLD_SECRET, NEW_SECRET], ids=["old", "new"])
def test_rotated_pair_verifies_for_receiver_knowing_only_one_secret(receiver_secret: str) -> None:
    headers = webhook_headers([NEW_SECRET, OLD_SECRET], "evt_1", int(time.time()), BODY)

    Webhook(receiver_secret).verify(BODY, headers)
    verify(receiver_secret, headers, BODY, now=int(time.time()))


def test_receiver_with_an_unrelated_secret_rejects_rotated_pair() -> None:
    headers = webhook_headers([NEW_SECRET, OLD_SECRET], "evt_1", int(time.time()), BODY)

    with pytest.raises(WebhookVerificationError):
        Webhook(generate_secret()).verify(BODY, headers)


def test_signature_header_lists_newest_secret_first() -> None:
    header = signature_header([NEW_SECRET, OLD_SECRET], "evt_1", SENT_AT, BODY)

    assert header.split(" ") == [
        sign(NEW_SECRET, "evt_1", SENT_AT, BODY),
        sign(OLD_SECRET, "evt_1", SENT_AT, BODY),
    ]


def test_webhook_headers_carry_id_timestamp_signature_and_content_type() -> None:
    headers = webhook_headers([NEW_SECRET], "evt_1", SENT_AT, BODY)

    assert headers == {
        "webhook-id": "evt_1",
        "webhook-timestamp": str(SENT_AT),
        "webhook-signature": sign(NEW_SECRET, "evt_1", SENT_AT, BODY),
        "content-type": "application/json",
    }


def test_signing_with_no_secret_is_refused() -> None:
    with pytest.raises(InvalidSecret):
        signature_header([], "evt_1", SENT_AT, BODY)


def test_verify_accepts_headers_whatever_their_case() -> None:
    headers = webhook_headers([NEW_SECRET], "evt_1", SENT_AT, BODY)
    titled = {name.title(): value for name, value in headers.items()}

    verify(NEW_SECRET, titled, BODY, now=SENT_AT + 299)


@pytest.mark.parametrize(
    ("secret", "overrides", "body", "now"),
    [
        pytest.param(NEW_SECRET, {}, BODY.replace(b"task_1", b"task_2"), SENT_AT, id="tampered"),
        pytest.param(OLD_SECRET, {}, BODY, SENT_AT, id="wrong secret"),
        pytest.param(NEW_SECRET, {}, BODY, SENT_AT + 301, id="stale timestamp"),
        pytest.param(NEW_SECRET, {}, BODY, SENT_AT - 301, id="timestamp from the future"),
        pytest.param(NEW_SECRET, {"webhook-id": "evt_2"}, BODY, SENT_AT, id="other message id"),
        pytest.param(NEW_SECRET, {"webhook-id": ""}, BODY, SENT_AT, id="missing id"),
        pytest.param(NEW_SECRET, {"webhook-signature": ""}, BODY, SENT_AT, id="missing signature"),
        pytest.param(NEW_SECRET, {"webhook-timestamp": "1e9"}, BODY, SENT_AT, id="float ts"),
        pytest.param(NEW_SECRET, {"webhook-timestamp": "soon"}, BODY, SENT_AT, id="garbage ts"),
    ],
)
def test_verify_rejects(secret: str, overrides: dict[str, str], body: bytes, now: int) -> None:
    headers = {**webhook_headers([NEW_SECRET], "evt_1", SENT_AT, BODY), **overrides}

    with pytest.raises(SignatureError):
        verify(secret, headers, body, now=now)


def test_verify_ignores_signatures_of_unknown_versions() -> None:
    headers = webhook_headers([NEW_SECRET], "evt_1", SENT_AT, BODY)
    v2_only = {**headers, "webhook-signature": headers["webhook-signature"].replace("v1,", "v2,")}

    with pytest.raises(SignatureError, match="no matching signature"):
        verify(NEW_SECRET, v2_only, BODY, now=SENT_AT)


@pytest.mark.parametrize(
    "secret",
    [
        "",
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "whsk_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "whsec_",
        "whsec_not base64!",
        "whsec_a",
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2La-_Sw",
    ],
)
def test_malformed_secret_is_invalid(secret: str) -> None:
    with pytest.raises(InvalidSecret):
        sign(secret, "evt_1", SENT_AT, BODY)


def test_unpadded_secret_is_accepted_like_other_libraries() -> None:
    padded = "whsec_" + base64.b64encode(b"0123456789abcdefghijklm").decode()
    assert padded.endswith("=")

    assert sign(padded.rstrip("="), "evt_1", 1, BODY) == sign(padded, "evt_1", 1, BODY)
