"""The shared HTTP boundary of provider clients: one POST per attempt, no transport retries.

:class:`HttpProviderBase` owns the httpx client (its transport, :class:`Http11Transport`, is a
pool of ``max_connections`` keep-alive connections sized from the caps, and never retries;
when the environment names a proxy for ``base_url`` — ``HTTPS_PROXY`` and the like — httpx's
own transport is used instead, so the proxy is honoured, also without retries; timeouts come
from the model config), sends one request and maps every transport failure and
non-2xx answer to a typed error. Credentials live only in the request headers; they are never
put into messages, ``repr`` or logs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import httpx
from httpx._utils import URLPattern, get_environment_proxies

from sluiceway.errors import ProviderTimeoutError, ProviderUnavailableError
from sluiceway.providers.http_errors import error_for_response, redact
from sluiceway.providers.http_transport import Http11Transport


def uses_proxy(base_url: str) -> bool:
    """Whether httpx, reading the environment (``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY``,
    ``NO_PROXY``), would send requests to ``base_url`` through a proxy."""
    url = httpx.URL(base_url)
    # The most specific pattern wins, as in httpx's own mount lookup.
    patterns = sorted(
        ((URLPattern(pattern), proxy) for pattern, proxy in get_environment_proxies().items()),
        key=lambda pair: pair[0],
    )
    for pattern, proxy in patterns:
        if pattern.matches(url):
            return proxy is not None
    return False


class HttpProviderBase:
    """One outbound attempt per ``_post``; subclasses build bodies and read answers."""

    def __init__(
        self,
        name: str,
        *,
        base_url: str,
        auth_headers: Mapping[str, str],
        secret: str | None,
        headers: Mapping[str, str] | None = None,
        max_connections: int = 64,
        default_timeout_seconds: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.name = name
        self._secret = secret
        self._base_url = base_url.rstrip("/")
        self._default_timeout_seconds = default_timeout_seconds
        common: dict[str, Any] = {
            "headers": {**dict(headers or {}), **dict(auth_headers)},
            "timeout": httpx.Timeout(default_timeout_seconds),
        }
        # No retries underneath: every attempt is admitted and counted by the executor.
        if transport is None and uses_proxy(self._base_url):
            # httpx's transports retry nothing by default; its limits size the pool.
            self._client = httpx.AsyncClient(
                **common, limits=httpx.Limits(max_connections=max_connections)
            )
        else:
            self._client = httpx.AsyncClient(
                **common, transport=transport or Http11Transport(max_connections)
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, base_url={self._base_url!r})"

    async def _post(
        self, path: str, body: Mapping[str, Any], *, model_id: str, timeout_seconds: float | None
    ) -> Any:
        """POST ``body`` as JSON and return the decoded JSON answer, or raise a typed error."""
        timeout = self._default_timeout_seconds if timeout_seconds is None else timeout_seconds
        where = f"provider {self.name!r} model {model_id!r}"
        try:
            response = await self._client.post(
                self._base_url + path, json=body, timeout=httpx.Timeout(timeout)
            )
        except httpx.TimeoutException as exc:
            raise ProviderTimeoutError(
                f"{where}: no answer within timeout_seconds={timeout:g} "
                f"({type(exc).__name__}); raise the model's timeout_seconds if the model is slow"
            ) from None
        except httpx.TransportError as exc:
            detail = redact(str(exc), self._secret) or type(exc).__name__
            raise ProviderUnavailableError(
                f"{where}: connection failed ({type(exc).__name__}: {detail}); check base_url "
                "and that the endpoint is up"
            ) from None
        content = response.content
        if response.status_code >= 300:
            raise error_for_response(
                provider=self.name,
                model_id=model_id,
                status=response.status_code,
                headers=response.headers,
                body=content,
                now_epoch_seconds=time.time(),
                secret=self._secret,
            )
        try:
            return json.loads(content)
        except (ValueError, UnicodeDecodeError):
            raise ProviderUnavailableError(
                f"{where}: HTTP {response.status_code} with a body that is not JSON "
                f"({len(content)} bytes); the endpoint answered malformed data"
            ) from None

    def _malformed(self, model_id: str, what: str) -> ProviderUnavailableError:
        return ProviderUnavailableError(
            f"provider {self.name!r} model {model_id!r}: the answer has no {what}; the endpoint "
            "answered malformed data"
        )

    async def aclose(self) -> None:
        await self._client.aclose()
