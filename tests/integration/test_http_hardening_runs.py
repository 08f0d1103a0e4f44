"""Whole-engine runs where answers are malformed in ways that once escaped the error mapping:
broken HTTP framing and deeply nested JSON from a loopback server (retried, then answered),
redirects (not retried, the row dropped with a message naming the target), and a degenerate
structured answer (re-asked)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sluiceway.config.models import DatasetConfig
from sluiceway.engine.run import RunOptions, RunOutcome, run_dataset
from sluiceway.providers.base import ModelRequest, ModelResponse
from sluiceway.testing.providers import ScriptedProviderClient

Answer = Callable[[str, int], bytes]
"""``(prompt, attempt number of that prompt) -> the raw HTTP answer``."""

RECORDS = 8


def _ok(text: str) -> bytes:
    body = json.dumps({"choices": [{"message": {"content": text}}]}).encode()
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)


async def _serve(answer: Answer, seen: Counter[str]) -> tuple[asyncio.Server, str]:
    """A loopback HTTP/1.1 server that reads each request whole and writes ``answer``'s bytes;
    the connection is closed after an answer that cannot be framed reliably."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                body = json.loads(await reader.readexactly(length))
                prompt = body["messages"][-1]["content"]
                seen[prompt] += 1
                data = answer(prompt, seen[prompt])
                writer.write(data)
                await writer.drain()
                if not data.startswith(b"HTTP/1.1 200 OK\r\ncontent-length"):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/v1"


def _config(base_url: str | None, **column: Any) -> DatasetConfig:
    provider: dict[str, Any] = {"name": "p", "type": "simulated"}
    if base_url is not None:
        provider = {"name": "p", "type": "openai", "base_url": base_url}
    return DatasetConfig.model_validate(
        {
            "providers": [provider],
            "models": [{"alias": "m", "provider": "p", "model": "m-1", "max_parallel_requests": 4}],
            "columns": [
                {"name": "n", "type": "sampler", "sampler": {"kind": "uuid"}},
                {"name": "text", "type": "llm_text", "model": "m", "prompt": "About {{ n }}"}
                | column,
            ],
            "run": {
                "num_records": RECORDS,
                "seed": 5,
                "buffer_size": 4,
                "retry": {"max_attempts": 3, "backoff_base_seconds": 0.0},
            },
        }
    )


def _run_against(answer: Answer, seen: Counter[str], **options: Any) -> RunOutcome:
    async def main() -> RunOutcome:
        server, base_url = await _serve(answer, seen)
        try:
            return await run_dataset(_config(base_url), RunOptions(output_dir=None, **options))
        finally:
            server.close()
            await server.wait_closed()

    return asyncio.run(main())


def _nested(depth: int) -> bytes:
    body = b"[" * depth + b"]" * depth
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)


BROKEN_ANSWERS: tuple[bytes, ...] = (
    _nested(100_000),  # JSON nested too deeply to decode
    b"HTTP/1.1 100 Continue\r\n\r\n" * 5_000 + _ok("never read"),  # interim answers without end
    b"HTTP/1.1 200 OK\r\ncontent-length: -3\r\n\r\n" + _ok("x")[-40:],  # negative length
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\n{}\r\n0\r\n\r\n",  # bad CRLF
)


def test_malformed_http_answers_are_retried_and_the_retry_answers(tmp_path: Path) -> None:
    # Each prompt's first attempt gets one kind of broken answer, its second a good one.
    seen: Counter[str] = Counter()

    def answer(prompt: str, attempt: int) -> bytes:
        if attempt == 1:
            return BROKEN_ANSWERS[len(seen) % len(BROKEN_ANSWERS)]
        return _ok(f"answer to {prompt}")

    outcome = _run_against(answer, seen)
    assert (outcome.info.rows_written, outcome.info.rows_dropped) == (RECORDS, 0)
    assert outcome.rows is not None
    assert all(row["text"] == f"answer to About {row['n']}" for row in outcome.rows)
    assert sorted(seen.values()) == [2] * RECORDS  # one retry per row, no more


def test_a_redirect_drops_its_row_without_retrying_and_names_the_target() -> None:
    seen: Counter[str] = Counter()
    moved = "https://api.example.com/v1/chat/completions"

    def answer(prompt: str, attempt: int) -> bytes:
        return b"HTTP/1.1 308 Permanent Redirect\r\nlocation: %s\r\ncontent-length: 0\r\n\r\n" % (
            moved.encode()
        )

    outcome = _run_against(answer, seen)
    assert (outcome.info.rows_written, outcome.info.rows_dropped) == (0, RECORDS)
    assert sorted(seen.values()) == [1] * RECORDS  # not retried
    for dropped in outcome.info.dropped_rows:
        assert f"HTTP 308 is a redirect to {moved!r}" in dropped.reason
        assert "base_url ('http://127.0.0.1:" in dropped.reason
        assert "is probably wrong" in dropped.reason


def test_a_degenerate_structured_answer_is_re_asked(tmp_path: Path) -> None:
    # The model first answers "[" 5,000 times (too deep for the JSON decoder), then valid JSON.
    def answer(request: ModelRequest) -> ModelResponse:
        if any(message.role == "assistant" for message in request.messages):
            return ModelResponse(text='{"fact": "valid"}')
        return ModelResponse(text="[" * 5_000)

    provider = ScriptedProviderClient(default=answer, name="p")
    config = _config(
        None,
        type="llm_structured",
        output_schema={
            "type": "object",
            "properties": {"fact": {"type": "string"}},
            "required": ["fact"],
        },
        max_reasks=1,
    )
    outcome = asyncio.run(
        run_dataset(config, RunOptions(output_dir=None, extra_providers={"p": provider}))
    )
    assert (outcome.info.rows_written, outcome.info.rows_dropped) == (RECORDS, 0)
    assert outcome.rows is not None
    assert [row["text"] for row in outcome.rows] == [{"fact": "valid"}] * RECORDS
    re_asks = [
        request.messages[-1].content
        for request in provider.requests
        if any(message.role == "assistant" for message in request.messages)
    ]
    assert len(provider.requests) == 2 * RECORDS and len(re_asks) == RECORDS
    assert all("nested too deeply" in text for text in re_asks)
