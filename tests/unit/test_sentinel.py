"""Redis behind Sentinel, the settings side: sentinels stand in for REDIS_URL, and the URL lends
the master its database and credentials (real sentinels are `tests/stack/test_sentinel.py`)."""

from __future__ import annotations

import pytest

from service.redis_client import master_options
from service.settings import SettingsError, load_settings


def test_sentinels_stand_in_for_redis_url_in_the_settings() -> None:
    load_settings(redis_sentinels="10.0.0.1:26379,sentinel-b:26379").require("redis_url")
    with pytest.raises(SettingsError, match="REDIS_URL"):
        load_settings().require("redis_url")
    with pytest.raises(SettingsError, match="REDIS_SENTINELS"):
        load_settings(redis_sentinels="no-port-here")


def test_redis_url_lends_the_master_its_database_and_credentials() -> None:
    assert master_options("rediss://user:p%40ss@ignored:6379/4") == {"db": 4, "username": "user", "password": "p@ss", "ssl": True}
    assert master_options(None) == {}
