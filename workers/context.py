"""The worker process's runtime, built once per process from the environment."""

from __future__ import annotations

from functools import lru_cache

from service.runtime import Runtime
from service.settings import get_settings


@lru_cache(maxsize=1)
def get_runtime() -> Runtime:
    return Runtime.from_settings(get_settings())
