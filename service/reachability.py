"""Whether providers can call us back at PUBLIC_BASE_URL, decided once at start-up.

A provider on the internet cannot reach a loopback or private address. When the provider itself
is on such an address (the simulator, a sandbox), it can: nothing to warn about.
"""

from __future__ import annotations

from service.settings import Settings
from service.webhooks.ssrf import UnsafeWebhookURL, check_url_syntax


def _private(url: str) -> bool:
    try:
        check_url_syntax(url, allow_private=False)
    except UnsafeWebhookURL:
        return True
    return False


def callbacks_unreachable(settings: Settings) -> str | None:
    """Why Apikley's callbacks cannot reach us, or None when they can (as far as we can tell
    without DNS). Then tasks are followed by polling alone, from their first check."""
    if not settings.apikley_api_key or _private(settings.apikley_base_url):
        return None
    if not _private(settings.public_base_url):
        return None
    return (
        f"PUBLIC_BASE_URL ({settings.public_base_url}) is a loopback or private address that "
        f"{settings.apikley_base_url} cannot call back: Apikley tasks are followed by polling alone, "
        "and a submit whose answer is lost cannot be recovered. Set PUBLIC_BASE_URL to the address "
        "providers reach this service at."
    )
