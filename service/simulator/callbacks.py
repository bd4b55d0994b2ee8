"""Apikley callback delivery from background asyncio tasks: request handling never waits on it."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx

from service.simulator.state import (
    CallbackAttempt,
    SimStore,
    SimTask,
    apikley_callback_body,
    callback_schedule,
    unix_ms,
)

logger = logging.getLogger(__name__)

CALLBACK_TIMEOUT_S = 10.0


class CallbackSender:
    """Sends each task's scheduled callbacks and records every attempt in the store."""

    def __init__(self, store: SimStore) -> None:
        self._store = store
        self._client: httpx.AsyncClient | None = None
        self._jobs: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._client = httpx.AsyncClient(timeout=CALLBACK_TIMEOUT_S)

    async def stop(self) -> None:
        await self.cancel_all()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def cancel_all(self) -> None:
        """Abandon every pending callback (on reset and shutdown)."""
        jobs = list(self._jobs)
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)

    def schedule(self, task: SimTask, url: str, video_url: str) -> None:
        """Start delivering `task`'s callbacks to `url` in the background."""
        if self._client is None:
            raise RuntimeError("callback sender not started: run the app with its lifespan")
        job = asyncio.create_task(self._deliver(self._client, task, url, video_url))
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)

    async def _deliver(
        self, client: httpx.AsyncClient, task: SimTask, url: str, video_url: str
    ) -> None:
        for callback in callback_schedule(task.plan):
            await asyncio.sleep(max(0.0, task.created_at + callback.send_after - time.time()))
            body = apikley_callback_body(task, callback.as_of, video_url)
            await self._post(client, task, url, body)

    async def _post(
        self, client: httpx.AsyncClient, task: SimTask, url: str, body: dict[str, Any]
    ) -> None:
        # Logged before sending: an attempt still in flight shows neither status nor error.
        attempt = CallbackAttempt(task.task_id, url, body, sent_at=unix_ms(time.time()))
        self._store.callbacks.append(attempt)
        try:
            response = await client.post(url, json=body)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            attempt.error = f"{type(exc).__name__}: {exc}"
            logger.warning("callback %s for %s failed: %s", url, task.task_id, attempt.error)
            return
        attempt.status_code = response.status_code
        logger.info(
            "callback %s for %s (state %s) answered %d",
            url, task.task_id, body["data"]["state"], response.status_code,
        )
