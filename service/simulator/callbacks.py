"""Apikley callback and Novita webhook delivery from background asyncio tasks: request handling
never waits on it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

import httpx

from service.simulator.signing import signature_headers
from service.simulator.state import (
    CallbackAttempt,
    ScheduledCallback,
    SimStore,
    SimTask,
    apikley_callback_body,
    callback_schedule,
    compact_json,
    novita_webhook_body,
    novita_webhook_schedule,
    unix_ms,
)

logger = logging.getLogger(__name__)

CALLBACK_TIMEOUT_S = 10.0
# Novita's webhook page: a webhook is retried up to 5 times on a 5 s timeout or a non-2xx answer.
NOVITA_WEBHOOK_TIMEOUT_S = 5.0
NOVITA_WEBHOOK_RETRIES = 5


class CallbackSender:
    """Sends each task's scheduled callbacks and webhooks; records every attempt in the store."""

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
        """Abandon every pending callback and webhook (on reset and shutdown)."""
        jobs = list(self._jobs)
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)

    def schedule(self, task: SimTask, url: str, video_url: str) -> None:
        """Start delivering the Apikley `task`'s callbacks to `url` in the background."""
        self._start(self._deliver(self._started(), task, url, video_url))

    def schedule_novita(self, task: SimTask, url: str, video_url: str) -> None:
        """Start delivering the Novita `task`'s webhooks to `url` in the background."""
        self._start(self._deliver_novita(self._started(), task, url, video_url))

    def _started(self) -> httpx.AsyncClient:
        if self._client is None:
            raise RuntimeError("callback sender not started: run the app with its lifespan")
        return self._client

    def _start(self, delivery: Coroutine[Any, Any, None]) -> None:
        job = asyncio.create_task(delivery)
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)

    @staticmethod
    async def _wait_for(task: SimTask, callback: ScheduledCallback) -> None:
        await asyncio.sleep(max(0.0, task.created_at + callback.send_after - time.time()))

    async def _deliver(
        self, client: httpx.AsyncClient, task: SimTask, url: str, video_url: str
    ) -> None:
        for callback in callback_schedule(task.plan):
            await self._wait_for(task, callback)
            # The account's settings as they are when sending, like a provider reading them.
            config = self._store.config
            body = apikley_callback_body(
                task, callback.as_of, video_url,
                config.apikley_message_key, config.callback_task_id_key,
            )
            headers = {"Content-Type": "application/json"}
            if config.webhook_hmac_key is not None:
                timestamp = int(time.time())
                headers |= signature_headers(config.webhook_hmac_key, task.task_id, timestamp)
            sent_at = unix_ms(time.time())
            attempt = CallbackAttempt(task.task_id, url, body, sent_at, headers=headers)
            await self._post(client, attempt, state=body["data"]["state"])

    async def _deliver_novita(
        self, client: httpx.AsyncClient, task: SimTask, url: str, video_url: str
    ) -> None:
        for callback in novita_webhook_schedule(task.plan):
            await self._wait_for(task, callback)
            body = novita_webhook_body(task, callback.as_of, video_url)
            state = body["payload"]["task"]["status"]
            for retry in range(NOVITA_WEBHOOK_RETRIES + 1):
                if retry:
                    await asyncio.sleep(task.plan.webhook_retry_s)
                headers = {"Content-Type": "application/json"}
                attempt = CallbackAttempt(
                    task.task_id, url, body, unix_ms(time.time()), headers=headers
                )
                if await self._post(client, attempt, state, NOVITA_WEBHOOK_TIMEOUT_S):
                    break

    async def _post(
        self,
        client: httpx.AsyncClient,
        attempt: CallbackAttempt,
        state: str,
        timeout_s: float | None = None,
    ) -> bool:
        """POST `attempt`'s body; True when the receiver answered 2xx (within `timeout_s`)."""
        # Logged before sending: an attempt still in flight shows neither status nor error.
        self._store.callbacks.append(attempt)
        content = compact_json(attempt.body).encode()
        try:
            async with asyncio.timeout(timeout_s):
                response = await client.post(attempt.url, content=content, headers=attempt.headers)
        except TimeoutError:
            attempt.error = f"TimeoutError: no answer within {timeout_s} s"
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            attempt.error = f"{type(exc).__name__}: {exc}"
        else:
            attempt.status_code = response.status_code
            logger.info(
                "callback %s for %s (state %s) answered %d",
                attempt.url, attempt.task_id, state, response.status_code,
            )
            return response.is_success
        logger.warning(
            "callback %s for %s failed: %s", attempt.url, attempt.task_id, attempt.error
        )
        return False
