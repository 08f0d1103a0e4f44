"""The shared HTTP boundary of provider clients: one POST per attempt, no transport retries.

:class:`HttpProviderBase` owns the httpx client (pool sized from the caps, timeouts from the
model config, ``retries=0``), sends one request and maps every transport failure and non-2xx
answer to a typed error. Credentials live only in the request headers; they are never put into
messages, ``repr`` or logs.

httpcore's pool does work quadratic in its connection count on every request, so the connections
are split over small pools (:class:`ShardedTransport`) and each request goes to the least busy one.
(``sniffio`` is a declared dependency: without it httpcore retries a failing import, a scan of
``sys.path``, each time it creates a lock.)
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx

from sluiceway.errors import ProviderTimeoutError, ProviderUnavailableError
from sluiceway.providers.http_errors import error_for_response, redact

SHARD_CONNECTIONS = 8  # connections per pool of a ShardedTransport


class _CountedStream(httpx.AsyncByteStream):
    """A response body that frees its shard's slot once, when it is closed."""

    def __init__(self, inner: httpx.AsyncByteStream, owner: ShardedTransport, index: int) -> None:
        self._inner = inner
        self._owner = owner
        self._index = index
        self._open = True

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            if self._open:
                self._open = False
                self._owner._busy[self._index] -= 1


class ShardedTransport(httpx.AsyncBaseTransport):
    """``max_connections`` split over pools of at most ``shard_connections``; no retries.

    A request goes to the pool with the fewest requests in flight (response bodies included),
    so while fewer than ``max_connections`` requests are in flight none waits for a connection.
    """

    def __init__(self, max_connections: int, shard_connections: int = SHARD_CONNECTIONS) -> None:
        if max_connections < 1 or shard_connections < 1:
            raise ValueError(
                "ShardedTransport needs max_connections >= 1 and shard_connections >= 1, got "
                f"{max_connections} and {shard_connections}"
            )
        count = -(-max_connections // shard_connections)
        size = -(-max_connections // count)
        limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
        self._shards = [httpx.AsyncHTTPTransport(retries=0, limits=limits) for _ in range(count)]
        self._busy = [0] * count

    @property
    def shard_count(self) -> int:
        return len(self._shards)

    @property
    def in_flight(self) -> tuple[int, ...]:
        return tuple(self._busy)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        busy = self._busy
        index = min(range(len(busy)), key=busy.__getitem__)
        busy[index] += 1
        try:
            response = await self._shards[index].handle_async_request(request)
        except BaseException:
            busy[index] -= 1
            raise
        stream = response.stream
        assert isinstance(stream, httpx.AsyncByteStream)
        response.stream = _CountedStream(stream, self, index)
        return response

    async def aclose(self) -> None:
        for shard in self._shards:
            await shard.aclose()


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
        limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self._client = httpx.AsyncClient(
            headers={**dict(headers or {}), **dict(auth_headers)},
            limits=limits,
            timeout=httpx.Timeout(default_timeout_seconds),
            # No retries underneath: every attempt is admitted and counted by the executor.
            transport=transport or ShardedTransport(max_connections),
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
