"""The worker process's shared state: its runtime, built once from the environment, and
whether it has been asked to stop."""

from __future__ import annotations

import threading
from functools import lru_cache

from service.runtime import Runtime
from service.settings import get_settings

# Set once a stop is asked for (SIGTERM, SIGINT): process-wide, because `run_worker` makes a new
# RQ worker after a Redis outage, and the stop must outlive the one that heard it.
STOPPING = threading.Event()


@lru_cache(maxsize=1)
def get_runtime() -> Runtime:
    return Runtime.from_settings(get_settings())
