"""The shared HTTP boundary of provider clients: one POST per attempt, no transport retries.

:class:`HttpProviderBase` owns the httpx client (its transport, :class:`Http11Transport`, is a
pool of ``max_connections`` keep-alive connections sized from the caps, and never retries;
when the environment names a proxy for ``base_url`` — ``HTTPS_PROXY`` and the like — httpx's
own transport is used instead, so the proxy is honoured, also without retries), sends one
request under one deadline of the model's ``timeout_seconds`` (from waiting for a connection
to the last byte of the answer) and maps every transport failure and non-2xx answer to a
typed error. The rate-limit headers of an answer (OpenAI's or Anthropic's) go with it: on
the answer for a success, on the error for a refusal. Credentials live only in the request
headers; they are never put into messages, ``repr`` or logs.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

import httpx
from httpx._utils import URLPattern, get_environment_proxies

from sluiceway.errors import ProviderTimeoutError, ProviderUnavailableError
from sluiceway.providers.http_errors import error_for_response, redact
from sluiceway.providers.http_transport import Http11Transport, default_port
from sluiceway.providers.rate_limit_headers import (
    parse_rate_limit_headers,
    select_rate_limit_headers,
)
from sluiceway.rate_limits import RateLimitHeaders
from sluiceway.version import __version__

_NO_PHASE_TIMEOUTS: Mapping[str, float | None] = {}


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


class JsonAnswer(NamedTuple):
    """A decoded 2xx answer and the rate-limit windows its headers reported (``None``: none)."""

    data: Any
    rate_limit: RateLimitHeaders | None


class HttpProviderBase:
    """One outbound attempt per ``_post``; subclasses build bodies and read answers."""

    # Answers carry the provider's rate-limit windows (``ModelResponse.rate_limit``): request
    # admission paces by them, and needs a token estimate of each request to pace by tokens.
    reports_rate_limits: ClassVar[bool] = True

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
        self._wire: _Wire | None = None
        if transport is None and uses_proxy(self._base_url):
            # httpx's transports retry nothing by default; its limits size the pool.
            self._client = httpx.AsyncClient(
                **common, limits=httpx.Limits(max_connections=max_connections)
            )
        elif transport is None:
            own = Http11Transport(max_connections)
            self._client = httpx.AsyncClient(**common, transport=own)
            self._wire = _Wire(own, self._base_url, common["headers"])
        else:
            self._client = httpx.AsyncClient(**common, transport=transport)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, base_url={self._base_url!r})"

    async def _post(
        self, path: str, body: Mapping[str, Any], *, model_id: str, timeout_seconds: float | None
    ) -> JsonAnswer:
        """POST ``body`` as JSON and return the decoded JSON answer with the rate-limit windows
        its headers reported, or raise a typed error (a rate-limit error carries them too)."""
        timeout = self._default_timeout_seconds if timeout_seconds is None else timeout_seconds
        where = f"provider {self.name!r} model {model_id!r}"
        headers: httpx.Headers | list[tuple[bytes, bytes]]
        try:
            # The deadline bounds the whole attempt: waiting for a connection, connecting,
            # sending, and reading the head and the whole body (a server that trickles bytes
            # cannot stretch it, as per-read timeouts would let it).
            async with asyncio.timeout(timeout):
                if self._wire is not None:
                    status, headers, content = await self._wire.post(path, body)
                else:
                    response = await self._client.post(
                        self._base_url + path, json=body, timeout=httpx.Timeout(timeout)
                    )
                    status = response.status_code
                    headers, content = response.headers, response.content
        except (httpx.TimeoutException, TimeoutError):
            raise ProviderTimeoutError(
                f"{where}: no complete answer within timeout_seconds={timeout:g} (the limit "
                "covers connecting, sending and reading the whole answer); raise the model's "
                "timeout_seconds if the model is slow"
            ) from None
        except httpx.TransportError as exc:
            detail = redact(str(exc), self._secret) or type(exc).__name__
            raise ProviderUnavailableError(
                f"{where}: connection failed ({type(exc).__name__}: {detail}); check base_url "
                "and that the endpoint is up"
            ) from None
        fields = select_rate_limit_headers(
            headers.raw if isinstance(headers, httpx.Headers) else headers
        )
        rate_limit = (
            parse_rate_limit_headers(fields, now_epoch_seconds=time.time()) if fields else None
        )
        if status >= 300:
            raise error_for_response(
                provider=self.name,
                model_id=model_id,
                status=status,
                headers=headers if isinstance(headers, httpx.Headers) else httpx.Headers(headers),
                body=content,
                now_epoch_seconds=time.time(),
                secret=self._secret,
                base_url=self._base_url,
                rate_limit=rate_limit,
            )
        try:
            return JsonAnswer(json.loads(content), rate_limit)
        except (ValueError, UnicodeDecodeError):
            raise ProviderUnavailableError(
                f"{where}: HTTP {status} with a body that is not JSON "
                f"({len(content)} bytes); the endpoint answered malformed data"
            ) from None
        except RecursionError:
            raise ProviderUnavailableError(
                f"{where}: HTTP {status} with a JSON body nested too deeply to decode "
                f"({len(content)} bytes); the endpoint answered malformed data"
            ) from None

    def _malformed(self, model_id: str, what: str) -> ProviderUnavailableError:
        return ProviderUnavailableError(
            f"provider {self.name!r} model {model_id!r}: the answer has no {what}; the endpoint "
            "answered malformed data"
        )

    async def aclose(self) -> None:
        await self._client.aclose()


class _Wire:
    """POSTs JSON through our own :class:`Http11Transport` without httpx's client layer.

    The request head (request line aside) is built once: the headers httpx would send for
    this client (``Host``, the configured and credential headers) plus ``Accept``,
    ``Content-Type`` and ``User-Agent``; no ``Accept-Encoding``, so answers come uncompressed.
    Per attempt only the body is encoded and framed. That spares building an ``httpx.Request``,
    its URL and headers, the client's auth, redirect and cookie steps and an ``httpx.Response``:
    CPU on the path from one answer to the next request, where a slot of the endpoint's
    capacity sits idle."""

    def __init__(
        self, transport: Http11Transport, base_url: str, headers: Mapping[str, str]
    ) -> None:
        url = httpx.URL(base_url)
        scheme = url.raw_scheme
        self._transport = transport
        self._base_url = base_url
        self._origin = (scheme, url.raw_host, url.port or default_port(scheme))
        fields = httpx.Headers(
            {
                "Host": url.netloc.decode("ascii"),
                "Accept": "application/json",
                "Content-Type": "application/json",
                "User-Agent": f"sluiceway/{__version__}",
                **dict(headers),
            }
        )
        for name, value in fields.raw:
            if any(bad in name + value for bad in (b"\r", b"\n", b"\x00")):
                raise ValueError(
                    f"the provider header {name.decode('latin-1')!r} holds a line break or a "
                    "NUL; remove it from the provider's headers"
                )
        self._fields = b"".join(name + b": " + value + b"\r\n" for name, value in fields.raw)
        self._targets: dict[str, bytes] = {}  # path -> request line

    async def post(
        self, path: str, body: Mapping[str, Any]
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """One exchange; the caller bounds it with the attempt's deadline (no phase timeouts
        here, so no timer per read)."""
        line = self._targets.get(path)
        if line is None:
            target = httpx.URL(self._base_url + path).raw_path or b"/"
            line = self._targets[path] = b"POST " + target + b" HTTP/1.1\r\n"
        payload = json.dumps(
            body, ensure_ascii=False, separators=(",", ":"), allow_nan=False
        ).encode("utf-8")
        message = b"".join(
            (line, self._fields, b"Content-Length: %d\r\n\r\n" % len(payload), payload)
        )
        answer = await self._transport.exchange(self._origin, message, _NO_PHASE_TIMEOUTS)
        return answer.status, answer.headers, answer.content
