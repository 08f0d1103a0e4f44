"""Requests per second the loopback mock server sustains (SPEC §7.3 target: >= 2,000 req/s).

Starts ``sluiceway mock-server`` as a subprocess on 127.0.0.1 (zero latency, no capacity
limit), drives it for ``--seconds`` with ``--connections`` keep-alive connections of a raw
asyncio HTTP/1.1 client (so the client is cheap), prints the rate and stops the server by PID.

    .venv/bin/python benchmarks/mock_server_load.py --seconds 5 --connections 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time

BODY = json.dumps(
    {"model": "m", "messages": [{"role": "user", "content": "Describe a lighthouse keeper"}]}
).encode()
REQUEST = (
    b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
    + f"content-length: {len(BODY)}\r\n\r\n".encode()
    + BODY
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)
    return status


async def _connection(port: int, deadline: float, counts: dict[int, int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.monotonic() < deadline:
            writer.write(REQUEST)
            status = await _read_response(reader)
            counts[status] = counts.get(status, 0) + 1
    finally:
        writer.close()


async def _wait_for(port: int) -> None:
    for _ in range(200):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return
    raise RuntimeError(f"the mock server did not start on port {port}")


async def _drive(port: int, seconds: float, connections: int) -> dict[int, int]:
    await _wait_for(port)
    counts: dict[int, int] = {}
    deadline = time.monotonic() + seconds
    await asyncio.gather(*(_connection(port, deadline, counts) for _ in range(connections)))
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "sluiceway.cli.app", "mock-server", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        started = time.monotonic()
        counts = asyncio.run(_drive(port, args.seconds, args.connections))
        elapsed = time.monotonic() - started
    finally:
        server.terminate()
        server.wait(timeout=10)
    total = sum(counts.values())
    print(
        json.dumps(
            {
                "requests": total,
                "seconds": round(args.seconds, 2),
                "requests_per_second": round(total / args.seconds),
                "wall_seconds_incl_startup": round(elapsed, 2),
                "statuses": counts,
                "connections": args.connections,
            }
        )
    )


if __name__ == "__main__":
    main()
