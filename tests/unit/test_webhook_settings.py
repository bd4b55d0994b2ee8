"""Webhook settings are checked at start-up, with the variable named in the error."""

from __future__ import annotations

import pytest

from service.settings import SettingsError, load_settings


def test_defaults_follow_svix() -> None:
    settings = load_settings(_env_file=None)
    assert settings.webhook_retry_schedule_s == [0, 5, 300, 1800, 7200, 18000, 36000, 36000]
    assert (settings.webhook_timeout_s, settings.webhook_disable_after_s, settings.webhook_secret_grace_s) == (15, 432000, 86400)


def test_a_schedule_is_read_from_a_comma_list() -> None:
    assert load_settings(webhook_retry_schedule_s="0, 0.5,2").webhook_retry_schedule_s == [0, 0.5, 2]


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"webhook_retry_schedule_s": ""}, "WEBHOOK_RETRY_SCHEDULE_S"),
        ({"webhook_retry_schedule_s": "0,-5"}, "WEBHOOK_RETRY_SCHEDULE_S"),
        ({"webhook_timeout_s": 30, "webhook_lease_s": 20}, "WEBHOOK_LEASE_S"),
    ],
)
def test_unusable_values_are_refused_by_name(overrides: dict[str, object], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        load_settings(**overrides)
