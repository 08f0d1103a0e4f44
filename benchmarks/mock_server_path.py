"""CPU per request of the mock server's request path, in process (no sockets, no client).

Feeds keep-alive chat requests to one connection of a started ``MockProviderServer`` through a
transport that only counts writes, so each request is parsed, admitted, answered (zero latency)
and written; prints the best and the median microseconds per request of ``--repeat`` rounds.
``--windows`` puts RPM and TPM windows in force (rate-limit headers on every answer).

    .venv/bin/python benchmarks/mock_server_path.py [--windows] [--requests 20000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

from sluiceway.providers import mock_server
from sluiceway.providers.behaviour import SimulationSettings

BODY = json.dumps(
    {"model": "m", "messages": [{"role": "user", "content": "Describe a lighthouse keeper"}]}
).encode()
REQUEST = (
    b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
    + f"content-length: {len(BODY)}\r\n\r\n".encode()
    + BODY
)


class CountingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: Any) -> None:
        self.writes += 1

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def close(self) -> None:
        pass


async def _measure(windows: bool, requests: int, repeat: int) -> list[float]:
    simulation = SimulationSettings(rpm=10**9, tpm=10**12) if windows else SimulationSettings()
    server = mock_server.MockProviderServer(mock_server.MockServerSettings(simulation=simulation))
    await server.start()
    connection = mock_server._HttpProtocol(server)
    transport = CountingTransport()
    connection.connection_made(transport)
    rounds = []
    try:
        for _ in range(repeat):
            started = time.process_time()
            for _ in range(requests):
                connection.data_received(REQUEST)
            rounds.append((time.process_time() - started) / requests * 1e6)
    finally:
        await server.aclose()
    if transport.writes != requests * repeat:
        raise RuntimeError(f"{transport.writes} answers for {requests * repeat} requests")
    return rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", action="store_true")
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    rounds = asyncio.run(_measure(args.windows, args.requests, args.repeat))
    print(
        json.dumps(
            {
                "windows": args.windows,
                "best_us_per_request": round(min(rounds), 2),
                "median_us_per_request": round(statistics.median(rounds), 2),
            }
        )
    )


if __name__ == "__main__":
    main()
