"""Whether providers can call us back at PUBLIC_BASE_URL, decided once at start-up.

A provider on the internet cannot reach a loopback or private address. When the provider itself
is on such an address (the simulator, a sandbox), it can: nothing to warn about.
"""

from __future__ import annotations

from service.providers import registry
from service.settings import Settings
from service.webhooks.ssrf import UnsafeWebhookURL, check_url_syntax


def _private(url: str) -> bool:
    try:
        check_url_syntax(url, allow_private=False)
    except UnsafeWebhookURL:
        return True
    return False


def callbacks_unreachable(settings: Settings) -> str | None:
    """Why a configured callback-mode provider's callbacks cannot reach us, or None when they can
    (as far as we can tell without DNS). Then tasks are followed by polling alone, from their
    first check."""
    if not _private(settings.public_base_url):
        return None
    for spec in registry.all():
        base_url = spec.base_url(settings)
        if spec.mode != "callback" or not spec.configured(settings) or base_url is None or _private(base_url):
            continue
        return (
            f"PUBLIC_BASE_URL ({settings.public_base_url}) is a loopback or private address that "
            f"{base_url} cannot call back: {spec.title} tasks are followed by polling alone, "
            "and a submit whose answer is lost cannot be recovered. Set PUBLIC_BASE_URL to the address "
            "providers reach this service at."
        )
    return None
