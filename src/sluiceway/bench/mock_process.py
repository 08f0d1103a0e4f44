"""The loopback mock server as a child process for benchmarks: started on 127.0.0.1 with a free
port, its URL read from its first line on stderr, stopped by PID (SIGTERM, then SIGKILL)."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from sluiceway.bench.scenarios import Endpoint
from sluiceway.errors import SluicewayError

_URL = re.compile(r"listening on (http://127\.0\.0\.1:\d+/v1)")
START_TIMEOUT_SECONDS = 30.0


@contextlib.contextmanager
def mock_server(endpoint: Endpoint, *, python: Path | None = None) -> Iterator[str]:
    """Serve ``endpoint``'s latency and capacity; yields the base URL. Blocks until it listens;
    raises ``SluicewayError`` when it does not within ``START_TIMEOUT_SECONDS``."""
    command = [
        str(python or sys.executable),
        "-m",
        "sluiceway.cli.app",
        "mock-server",
        "--port",
        "0",
        "--latency-seconds",
        str(endpoint.latency_seconds),
        "--retry-after-seconds",
        str(endpoint.retry_after_seconds),
    ]
    if endpoint.capacity is not None:
        command += ["--capacity", str(endpoint.capacity)]
    command += endpoint.mock_flags
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        url = _read_url(process)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        if process.stderr is not None:
            process.stderr.close()


def _read_url(process: subprocess.Popen[str]) -> str:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    assert process.stderr is not None
    seen: list[str] = []
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break  # the server exited
        seen.append(line)
        if match := _URL.search(line):
            return match.group(1)
    raise SluicewayError(
        f"the mock server (pid {process.pid}) did not report its URL within "
        f"{START_TIMEOUT_SECONDS:.0f} s; its stderr: {''.join(seen)[-500:]!r}"
    )
