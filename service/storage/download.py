"""Downloading a provider's video: streamed to a local file, capped, hashed, and through the same
SSRF guard as webhooks (`service/webhooks/ssrf.py`, ALLOW_PRIVATE_WEBHOOKS).

Every hop is checked the way a webhook URL is (`checked_url`: scheme, shape, literal addresses)
and connects only to addresses `SafeResolver` vetted. Redirects are followed here, hop by hop,
rather than by aiohttp: a redirect to a literal address never reaches a resolver.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from yarl import URL

from service.domain.storage import (
    DownloadProblem,
    check_complete,
    check_length,
    check_received,
    kept_type,
)
from service.webhooks.sender import SafeResolver, checked_url
from service.webhooks.ssrf import Resolver, UnresolvableHost, UnsafeWebhookURL

USER_AGENT = "kling-relay-storage/1"
CHUNK = 1024 * 1024
MAX_REDIRECTS = 5
REDIRECTS = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True)
class Downloaded:
    sha256: str
    bytes: int
    content_type: str


@dataclass(frozen=True)
class DownloadRules:
    max_bytes: int
    timeout_s: float
    allow_private: bool


def download(url: str, into: Path, rules: DownloadRules, *, resolver: Resolver | None = None) -> Downloaded:
    """Fetch `url` into the file `into`; raises DownloadProblem. For sync callers (the RQ job)."""
    return asyncio.run(adownload(url, into, rules, resolver=resolver))


async def adownload(url: str, into: Path, rules: DownloadRules, *, resolver: Resolver | None = None) -> Downloaded:
    connector = aiohttp.TCPConnector(
        resolver=SafeResolver(allow_private=rules.allow_private, resolver=resolver), use_dns_cache=False, limit=1
    )
    timeout = aiohttp.ClientTimeout(total=rules.timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers={"User-Agent": USER_AGENT}) as session:
        try:
            return await _follow(session, url, into, rules)
        except TimeoutError as exc:
            raise DownloadProblem("timeout", f"the download took over {rules.timeout_s:g} s", retryable=True) from exc
        except UnresolvableHost as exc:
            raise DownloadProblem("unresolvable", exc.reason, retryable=True) from exc
        except UnsafeWebhookURL as exc:
            raise DownloadProblem("unsafe_url", exc.reason, retryable=False) from exc
        except aiohttp.ClientPayloadError as exc:
            raise DownloadProblem("truncated", f"the body was cut short: {exc}", retryable=True) from exc
        except aiohttp.ClientError as exc:
            raise DownloadProblem("network", f"{type(exc).__name__}: {exc}", retryable=True) from exc


async def _follow(session: aiohttp.ClientSession, url: str, into: Path, rules: DownloadRules) -> Downloaded:
    for _ in range(MAX_REDIRECTS + 1):
        target: URL = checked_url(url, allow_private=rules.allow_private)
        # identity: the bytes kept and hashed are the video's own, never a compressed transfer.
        headers = {"Accept-Encoding": "identity"}
        async with session.get(target, allow_redirects=False, auto_decompress=False, headers=headers) as response:
            if response.status in REDIRECTS and "Location" in response.headers:
                url = str(target.join(URL(response.headers["Location"])))
                continue
            if response.status != 200:
                raise DownloadProblem("http_error", f"the video URL answered {response.status}", retryable=True)
            return await _save(response, into, rules)
    raise DownloadProblem("too_many_redirects", f"more than {MAX_REDIRECTS} redirects", retryable=False)


async def _save(response: aiohttp.ClientResponse, into: Path, rules: DownloadRules) -> Downloaded:
    declared = response.content_length
    check_length(declared, max_bytes=rules.max_bytes)
    digest = hashlib.sha256()
    received = 0
    head = b""
    content_type: str | None = None
    # Plain blocking writes: this event loop carries this one download and nothing else.
    with open(into, "wb") as out:  # noqa: ASYNC230
        async for chunk in response.content.iter_chunked(CHUNK):
            received += len(chunk)
            check_received(received, max_bytes=rules.max_bytes)
            if content_type is None:
                head += chunk[:8]
                if len(head) >= 8:
                    content_type = kept_type(response.headers.get("Content-Type"), head)
            digest.update(chunk)
            out.write(chunk)
    check_complete(received, declared)
    if content_type is None:
        content_type = kept_type(response.headers.get("Content-Type"), head)
    return Downloaded(sha256=digest.hexdigest(), bytes=received, content_type=content_type)
