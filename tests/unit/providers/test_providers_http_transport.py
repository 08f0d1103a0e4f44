"""The provider clients' HTTP/1.1 transport over real loopback sockets: the pool bound, keep-alive
reuse, waiting for a free connection, every body framing, and failures that free their slot."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from sluiceway.errors import ProviderTimeoutError, ProviderUnavailableError
from sluiceway.providers.base import ChatMessage, GenerationKind, ModelRequest
from sluiceway.providers.behaviour import SimulationSettings
from sluiceway.providers.http_base import uses_proxy
from sluiceway.providers.http_transport import Http11Transport
from sluiceway.providers.mock_server import MockProviderServer, MockServerSettings
from sluiceway.providers.openai import OpenAICompatibleClient
from sluiceway.requests.outcomes import RequestReleaseOutcome, classify_exception

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def _chat(n: int) -> ModelRequest:
    return ModelRequest(
        model_id="m",
        kind=GenerationKind.TEXT,
        messages=(ChatMessage(role="user", content=f"Describe weir number {n}"),),
        timeout_seconds=5.0,
    )


async def _mock(latency_seconds: float = 0.0) -> MockProviderServer:
    server = MockProviderServer(
        MockServerSettings(simulation=SimulationSettings(latency_seconds=latency_seconds))
    )
    await server.start()
    return server


RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class _RawServer:
    """A loopback server that answers with hand-written bytes; ``close`` waits for its handlers
    to finish, so no socket outlives the test."""

    def __init__(self, server: asyncio.Server, handlers: list[asyncio.Task[None]]) -> None:
        self._server = server
        self._handlers = handlers

    def close(self) -> None:
        self._server.close()

    async def wait_closed(self) -> None:
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()


async def _raw_server(handler: RawHandler) -> tuple[_RawServer, str]:
    handlers: list[asyncio.Task[None]] = []

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.append(task)
        try:
            await handler(reader, writer)
        finally:
            writer.close()
            await writer.wait_closed()

    server = await asyncio.start_server(tracked, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return _RawServer(server, handlers), f"http://127.0.0.1:{port}"


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)
    return head


def test_the_pool_needs_a_connection() -> None:
    with pytest.raises(ValueError, match="max_connections >= 1"):
        Http11Transport(0)


async def test_concurrent_requests_get_their_own_connections_which_are_kept_alive() -> None:
    server = await _mock(latency_seconds=0.2)
    transport = Http11Transport(24)
    try:
        async with httpx.AsyncClient(transport=transport) as http:
            responses = await asyncio.gather(
                *(http.post(server.base_url + "/chat/completions", json=BODY) for _ in range(24))
            )
            assert [r.status_code for r in responses] == [200] * 24
            assert server.stats()["models"]["m"]["max_in_flight"] == 24  # none waited
            assert (transport.open_connections, transport.idle_connections) == (24, 24)
            for _ in range(2):
                await asyncio.gather(
                    *(
                        http.post(server.base_url + "/chat/completions", json=BODY)
                        for _ in range(24)
                    )
                )
            assert transport.connections_opened == 24 and transport.requests_sent == 72
    finally:
        await server.aclose()
    assert transport.open_connections == 0


async def test_requests_beyond_the_pool_wait_for_a_connection_and_reuse_it() -> None:
    server = await _mock(latency_seconds=0.05)
    transport = Http11Transport(2)
    client = OpenAICompatibleClient("mock", base_url=server.base_url, transport=transport)
    try:
        answers = await asyncio.gather(*(client.send(_chat(n)) for n in range(6)))
        assert len(answers) == 6
        assert server.stats()["models"]["m"]["max_in_flight"] == 2
        assert transport.connections_opened == 2  # finished requests hand theirs over
    finally:
        await client.aclose()
        await server.aclose()


async def test_a_request_that_finds_no_free_connection_in_time_is_a_pool_timeout() -> None:
    arrived = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        arrived.set()
        await reader.read()  # never answers; returns when the client closes
        writer.close()

    server, base = await _raw_server(handler)
    transport = Http11Transport(1)
    try:
        async with httpx.AsyncClient(transport=transport) as http:
            hung = asyncio.create_task(http.post(base + "/x", json=BODY))
            await arrived.wait()
            with pytest.raises(httpx.PoolTimeout):
                await http.post(base + "/x", json=BODY, timeout=httpx.Timeout(5.0, pool=0.05))
            hung.cancel()
            with pytest.raises(asyncio.CancelledError):
                await hung
            assert transport.open_connections == 0  # the cancelled request closed its own
    finally:
        server.close()
        await server.wait_closed()


async def test_a_failed_connect_frees_its_slot() -> None:
    transport = Http11Transport(1)
    async with httpx.AsyncClient(transport=transport) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get("http://127.0.0.1:9/")  # discard port: nothing listens
        with pytest.raises(httpx.ConnectError):
            await http.get("http://127.0.0.1:9/")
    assert transport.open_connections == 0


async def test_chunked_interim_and_close_delimited_bodies_are_read_whole() -> None:
    answers = iter(
        [
            b"HTTP/1.1 100 Continue\r\n\r\n"
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
            b'4;ext=1\r\n{"a"\r\n3\r\n: 1\r\n1\r\n}\r\n0\r\ntrailer: x\r\n\r\n',
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b'HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n{"closed": true}',
        ]
    )

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await _read_request(reader)
                answer = next(answers)
                writer.write(answer)
                await writer.drain()
                if b"connection: close" in answer:
                    break
        except (asyncio.IncompleteReadError, StopIteration):
            pass
        writer.close()

    server, base = await _raw_server(handler)
    transport = Http11Transport(1)
    try:
        async with httpx.AsyncClient(transport=transport) as http:
            chunked = await http.post(base + "/x", json=BODY)
            assert chunked.json() == {"a": 1}
            empty = await http.post(base + "/x", json=BODY)
            assert (empty.status_code, empty.content) == (204, b"")
            closed = await http.post(base + "/x", json=BODY)
            assert closed.json() == {"closed": True}
        assert transport.connections_opened == 1  # kept alive until the server said close
        assert transport.open_connections == 0
    finally:
        server.close()
        await server.wait_closed()


async def test_a_connection_the_server_closed_while_idle_is_not_reused() -> None:
    closed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
        await writer.drain()
        writer.close()  # without saying so in a header
        await writer.wait_closed()
        closed.set()

    server, base = await _raw_server(handler)
    transport = Http11Transport(4)
    try:
        async with httpx.AsyncClient(transport=transport) as http:
            assert (await http.get(base + "/")).json() == {}
            await closed.wait()
            await asyncio.sleep(0)  # one loop turn: the client reads the end of the stream
            assert transport.idle_connections == 1
            assert (await http.get(base + "/")).json() == {}
        assert transport.connections_opened == 2
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"", "without sending a complete answer"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n{}", "2 of 10 body bytes"),
        (b"NOTHTTP\r\n\r\n", "malformed status line"),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n-2\r\n{}\r\n", "bad chunk size"),
        # A negative length once cut the body short: '{}' was read as '{'.
        (b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n{}", "bad content-length"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n{}", "bad content"),
        # A chunk longer than its size line says: the extra byte was once dropped unseen.
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\n{}\r\n0\r\n\r\n",
            "not followed by CRLF",
        ),
        (b"HTTP/1.1 100 Continue\r\n\r\n" * 5_000, "more than 100 interim"),
    ],
)
async def test_broken_answers_are_protocol_errors(answer: bytes, message: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(answer)
        await writer.drain()
        writer.close()

    server, base = await _raw_server(handler)
    transport = Http11Transport(1)
    try:
        async with httpx.AsyncClient(transport=transport) as http:
            with pytest.raises(httpx.RemoteProtocolError, match=message):
                await http.get(base + "/")
        assert transport.open_connections == 0
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def slow_server() -> AsyncIterator[str]:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await reader.read()  # never answers; returns when the client closes
        writer.close()

    server, base = await _raw_server(handler)
    try:
        yield base
    finally:
        server.close()
        await server.wait_closed()


async def test_no_answer_in_time_is_a_read_timeout_and_closes_the_connection(
    slow_server: str,
) -> None:
    transport = Http11Transport(1)
    async with httpx.AsyncClient(transport=transport) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.get(slow_server + "/", timeout=httpx.Timeout(5.0, read=0.05))
        assert transport.open_connections == 0


@pytest.mark.parametrize(
    ("environment", "base_url", "proxied"),
    [
        ({}, "https://api.example.com/v1", False),
        ({"HTTPS_PROXY": "http://proxy.internal:3128"}, "https://api.example.com/v1", True),
        ({"HTTPS_PROXY": "http://proxy.internal:3128"}, "http://127.0.0.1:8000/v1", False),
        (
            {"ALL_PROXY": "http://proxy.internal:3128", "NO_PROXY": "api.example.com"},
            "https://api.example.com/v1",
            False,
        ),
    ],
)
def test_a_proxy_in_the_environment_selects_httpx_own_transport(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], base_url: str, proxied: bool
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert uses_proxy(base_url) is proxied


async def test_a_client_on_its_own_transport_sends_one_well_formed_request_per_attempt() -> None:
    seen: list[tuple[bytes, bytes]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        seen.append((head, await reader.readexactly(length)))
        answer = b'{"choices": [{"message": {"content": "a weir"}}]}'
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))
        await writer.drain()

    server, url = await _raw_server(handler)
    client = OpenAICompatibleClient(
        "raw", base_url=url + "/v1/", api_key="sk-test", headers={"X-Team": "locks"}
    )
    try:
        assert (await client.send(_chat(1))).text == "a weir"
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()
    ((head, body),) = seen
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/chat/completions HTTP/1.1"
    fields = {
        name.lower(): value.strip()
        for name, _, value in (line.partition(b":") for line in lines[1:] if line)
    }
    assert fields[b"host"] == url.removeprefix("http://").encode()
    assert fields[b"authorization"] == b"Bearer sk-test"
    assert fields[b"x-team"] == b"locks"
    assert fields[b"content-type"] == b"application/json"
    assert b"accept-encoding" not in fields  # answers come uncompressed
    assert int(fields[b"content-length"]) == len(body)
    assert b'"Describe weir number 1"' in body


def test_a_header_value_with_a_line_break_is_refused_when_the_client_is_built() -> None:
    with pytest.raises(ValueError, match="line break"):
        OpenAICompatibleClient(
            "raw", base_url="http://127.0.0.1:9", headers={"X-Team": "locks\r\nX-Evil: 1"}
        )


@pytest.mark.parametrize("path", ["wire", "httpx"])
async def test_timeout_seconds_bounds_the_whole_attempt_against_a_trickling_server(
    path: str,
) -> None:
    # The server sends a head promising 400 bytes, then one byte every 20 ms: every read
    # gets data well within the timeout, but the whole answer would take 8 s.
    promised = 400
    sent: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % promised)
        sent.append(0)
        try:
            for _ in range(promised):
                writer.write(b" ")
                await writer.drain()
                sent[0] += 1
                await asyncio.sleep(0.02)
        except ConnectionError:
            pass  # the client gave up and closed the connection

    server, base = await _raw_server(handler)
    transport = Http11Transport(1) if path == "httpx" else None
    client = OpenAICompatibleClient("raw", base_url=base, transport=transport)
    request = ModelRequest(
        model_id="m",
        kind=GenerationKind.TEXT,
        messages=(ChatMessage(role="user", content="hi"),),
        timeout_seconds=0.3,
    )
    try:
        with pytest.raises(ProviderTimeoutError, match=r"timeout_seconds=0\.3") as caught:
            await client.send(request)
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()
    assert classify_exception(caught.value) == (RequestReleaseOutcome.PROVIDER_TIMEOUT, None)
    assert sent and sent[0] < promised  # the attempt ended before the trickle did


@pytest.mark.parametrize(
    "answer",
    [
        # A body nested too deeply for the JSON decoder, as an answer and as an error body.
        b"HTTP/1.1 200 OK\r\ncontent-length: 200000\r\n\r\n" + b"[" * 100_000 + b"]" * 100_000,
        b"HTTP/1.1 500 Oops\r\ncontent-length: 200000\r\n\r\n" + b"[" * 100_000 + b"]" * 100_000,
        # A long run of interim answers.
        b"HTTP/1.1 100 Continue\r\n\r\n" * 5_000,
    ],
    ids=["deep-json", "deep-json-error-body", "interim-answers"],
)
async def test_answers_that_once_overflowed_the_stack_are_retryable_provider_failures(
    answer: bytes,
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(answer)
        await writer.drain()

    server, base = await _raw_server(handler)
    client = OpenAICompatibleClient("raw", base_url=base)
    try:
        with pytest.raises(ProviderUnavailableError, match=r"malformed|interim|HTTP 500") as caught:
            await client.send(_chat(1))
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()
    assert caught.value.retryable
    assert classify_exception(caught.value) == (RequestReleaseOutcome.PROVIDER_FAILURE, None)
