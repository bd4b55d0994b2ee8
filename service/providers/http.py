"""The shared httpx plumbing of provider clients: one pooled client, transport errors named."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from service.providers.base import ProviderError

# Failures that happen before a single byte of the request can have reached the provider.
_NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol, httpx.LocalProtocolError)


class ProviderHttp:
    """One provider's API: a pooled client with its bearer key (the `Http` a client is given)."""

    def __init__(self, base_url: str, api_key: str, timeout_s: float) -> None:
        self._client = httpx.Client(
            base_url=base_url,
            headers={"Authorization": f"Bearer {api_key}", "Accept": "application/json"},
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
            follow_redirects=False,
        )

    def send(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        """(HTTP status, decoded JSON body or None); network trouble is a retryable ProviderError,
        marked `outcome_unknown` unless the request provably never left (connection refused)."""
        try:
            response = self._client.request(method, path, **kwargs)
        except _NEVER_SENT as exc:
            raise ProviderError("network_error", f"could not reach provider ({type(exc).__name__})", retryable=True) from exc
        except httpx.TimeoutException as exc:
            raise ProviderError(
                "timeout", f"provider did not answer in time ({type(exc).__name__})", retryable=True, outcome_unknown=True
            ) from exc
        except httpx.TransportError as exc:
            raise ProviderError(
                "network_error", f"connection lost before the answer ({type(exc).__name__})", retryable=True, outcome_unknown=True
            ) from exc
        try:
            body = orjson.loads(response.content) if response.content else None
        except orjson.JSONDecodeError:
            body = None
        return response.status_code, body
