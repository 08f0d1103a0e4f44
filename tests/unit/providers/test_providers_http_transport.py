"""The sharded httpx transport of the HTTP providers, over real loopback sockets."""

from __future__ import annotations

import asyncio
import sys
import time

import httpx
import pytest

import sluiceway.providers.http_base  # noqa: F401  (records a missing sniffio once)
from sluiceway.providers.base import ChatMessage, GenerationKind, ModelRequest
from sluiceway.providers.behaviour import SimulationSettings
from sluiceway.providers.http_base import ShardedTransport
from sluiceway.providers.mock_server import MockProviderServer, MockServerSettings
from sluiceway.providers.openai import OpenAICompatibleClient


def _chat(n: int) -> ModelRequest:
    return ModelRequest(
        model_id="m",
        kind=GenerationKind.TEXT,
        messages=(ChatMessage(role="user", content=f"Describe weir number {n}"),),
        timeout_seconds=5.0,
    )


def test_connections_are_split_over_small_pools() -> None:
    assert ShardedTransport(64).shard_count == 8
    assert ShardedTransport(9).shard_count == 2
    assert ShardedTransport(1).shard_count == 1
    with pytest.raises(ValueError, match="max_connections >= 1"):
        ShardedTransport(0)


async def test_concurrent_requests_spread_over_shards_and_free_their_slots() -> None:
    server = MockProviderServer(
        MockServerSettings(simulation=SimulationSettings(latency_seconds=0.2))
    )
    await server.start()
    transport = ShardedTransport(24, shard_connections=8)
    client = OpenAICompatibleClient(
        "mock", base_url=server.base_url, api_key=None, max_connections=24
    )
    try:
        async with httpx.AsyncClient(transport=transport) as http:
            peaks: list[tuple[int, ...]] = []

            async def one() -> int:
                response = await http.post(
                    server.base_url + "/chat/completions",
                    json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                )
                peaks.append(transport.in_flight)
                return response.status_code

            statuses = await asyncio.gather(*(one() for _ in range(24)))
            assert statuses == [200] * 24
            assert transport.in_flight == (0, 0, 0)
            assert max(max(p) for p in peaks) <= 8
            assert server.stats()["models"]["m"]["max_in_flight"] == 24  # none waited
        answers = await asyncio.gather(*(client.send(_chat(n)) for n in range(48)))
        assert len(answers) == 48
    finally:
        await client.aclose()
        await server.aclose()


async def test_a_failed_request_frees_its_slot() -> None:
    transport = ShardedTransport(2, shard_connections=1)
    async with httpx.AsyncClient(transport=transport) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get("http://127.0.0.1:9/")  # discard port: nothing listens
    assert transport.in_flight == (0, 0)


def test_a_missing_sniffio_fails_to_import_at_once() -> None:
    if sys.modules.get("sniffio") is not None:
        pytest.skip("sniffio is installed")
    started = time.perf_counter()
    for _ in range(200):
        with pytest.raises(ImportError):
            import sniffio  # noqa: F401
    assert time.perf_counter() - started < 0.05
