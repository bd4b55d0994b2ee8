"""The delivery HTTP client's URL guard, without a server: request URLs spell the host as the guard
read it (the client against a real local server is `tests/stack/test_webhook_sender.py`)."""

from __future__ import annotations

from service.webhooks.sender import checked_url


def test_request_urls_spell_the_host_as_the_guard_read_it() -> None:
    assert str(checked_url("http://2130706433:8080/a?b=c", allow_private=True)) == "http://127.0.0.1:8080/a?b=c"
    assert str(checked_url("https://Example.COM:443/x%20y", allow_private=False)) == "https://example.com/x%20y"
    assert str(checked_url("http://[::1]:9/h", allow_private=True)) == "http://[::1]:9/h"
