"""The HTTP edge of webhook delivery: one pooled aiohttp client per worker process.

Why aiohttp: for small POSTs to local receivers on this project's 2-core machines, httpx's own
async pool managed 270–600 requests/s, httpx over the `httpx-aiohttp` transport 2,100 and aiohttp
4,500; a raw aiohttp session reaches 6,000–9,000/s in bench/fanout.py, which measures
this engine beside it.

Every attempt: the URL is checked again (a pure check, cached per URL), the host is resolved by `SafeResolver`
(which returns only vetted addresses, so the connection goes where the check looked), no
redirect is followed, the whole attempt has one deadline, and at most 1 KB of the answer is read.
"""

from __future__ import annotations

import asyncio
import socket
import time
from functools import lru_cache

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from service.webhooks.outcomes import AttemptResult
from service.webhooks.policy import RESPONSE_BODY_KEPT
from service.webhooks.ssrf import (
    Resolver,
    UnsafeWebhookURL,
    check_url_syntax,
    resolve_safe,
)

USER_AGENT = "kling-relay-webhooks/1"


class SafeResolver(AbstractResolver):
    """aiohttp resolver that hands out only addresses `ssrf.resolve_safe` has vetted."""

    def __init__(self, *, allow_private: bool, resolver: Resolver | None = None) -> None:
        self.allow_private = allow_private
        self.resolver = resolver

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        addresses = await resolve_safe(host, port, allow_private=self.allow_private, resolver=self.resolver)
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in addresses
        ]

    async def close(self) -> None:
        return None


@lru_cache(maxsize=4096)
def checked_url(url: str, *, allow_private: bool) -> URL:
    """`url` checked as at subscription time (scheme, shape, literal addresses), spelled as the
    check read it (normalised host, legacy IPv4 forms written out) so the client cannot read it
    differently. Names are vetted after DNS by `SafeResolver`. Cached: it is pure, and parsing
    dominated the per-attempt cost."""
    parsed = check_url_syntax(url, allow_private=allow_private)
    host = f"[{parsed.host}]" if ":" in parsed.host else parsed.host
    default_port = 443 if parsed.scheme == "https" else 80
    port = "" if parsed.port == default_port else f":{parsed.port}"
    return URL(f"{parsed.scheme}://{host}{port}{parsed.path_and_query}", encoded=True)


class WebhookSender:
    """Posts signed bodies. Create and use it on one event loop; `close` it on that loop."""

    def __init__(
        self, *, timeout_s: float, concurrency: int, allow_private: bool, resolver: Resolver | None = None
    ) -> None:
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.timeout_s = timeout_s
        self.concurrency = concurrency
        self.allow_private = allow_private
        self.resolver = resolver
        self._session: aiohttp.ClientSession | None = None
        self._slots: asyncio.Semaphore | None = None

    def _client(self) -> tuple[aiohttp.ClientSession, asyncio.Semaphore]:
        if self._session is None or self._slots is None:
            connector = aiohttp.TCPConnector(
                limit=self.concurrency,
                resolver=SafeResolver(allow_private=self.allow_private, resolver=self.resolver),
                # Cached answers were vetted when resolved; a short TTL still tracks DNS changes.
                ttl_dns_cache=10,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self.timeout,
                auto_decompress=False,
                headers={"user-agent": USER_AGENT},
                cookie_jar=aiohttp.DummyCookieJar(),
            )
            # Waiting for a free slot must not eat into an attempt's timeout, so queue here.
            self._slots = asyncio.Semaphore(self.concurrency)
        return self._session, self._slots

    async def post(self, url: str, headers: dict[str, str], body: bytes) -> AttemptResult:
        session, slots = self._client()
        async with slots:
            started = time.perf_counter()
            try:
                return await self._post(session, url, headers, body, started)
            except UnsafeWebhookURL as exc:
                return AttemptResult(None, _ms_since(started), f"unsafe_url: {exc.reason}")
            except TimeoutError:
                return AttemptResult(None, _ms_since(started), f"timeout: no answer within {self.timeout_s:g} s")
            except aiohttp.ClientError as exc:
                return AttemptResult(None, _ms_since(started), f"connection_error: {type(exc).__name__}: {exc}"[:500])

    async def _post(
        self, session: aiohttp.ClientSession, url: str, headers: dict[str, str], body: bytes, started: float
    ) -> AttemptResult:
        # aiohttp skips the resolver for IP literals: `checked_url` has vetted those.
        target = checked_url(url, allow_private=self.allow_private)
        async with session.post(target, data=body, headers=headers, allow_redirects=False) as response:
            kept = b""
            while len(kept) < RESPONSE_BODY_KEPT:
                chunk = await response.content.read(RESPONSE_BODY_KEPT - len(kept))
                if not chunk:
                    break
                kept += chunk
            if not response.content.at_eof():
                # Do not read an unbounded body to keep the connection: drop it instead.
                response.close()
            return AttemptResult(response.status, _ms_since(started), None, kept)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _ms_since(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)
