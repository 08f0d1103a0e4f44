"""What the mock server needs of an API dialect (OpenAI chat/embeddings, Anthropic messages).

A dialect checks a request's credential headers, reads its body into a
:class:`sluiceway.providers.base.ModelRequest`, and writes answers, error bodies and rate-limit
headers in its provider's format. The server keeps admission, latency and faults to itself.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from typing import Any, Protocol

from sluiceway.providers.base import ModelRequest, ModelResponse
from sluiceway.providers.behaviour import WindowState


class ErrorKind(enum.Enum):
    """Errors the server answers; each dialect names them its own way."""

    INVALID_REQUEST = "invalid_request"
    AUTHENTICATION = "authentication"
    NOT_FOUND = "not_found"
    RATE_LIMIT = "rate_limit"
    SERVER = "server"
    OVERLOADED = "overloaded"


class Dialect(Protocol):
    def refusal(self, headers: Mapping[str, str], api_key: str | None) -> tuple[int, bytes] | None:
        """(status, error body) when the credential or protocol headers are wrong, else None."""
        ...

    def parse(self, path: str, body: bytes) -> tuple[ModelRequest, Any]:
        """The request and what else the answer needs (dialect-private); raises
        :class:`sluiceway.errors.BadRequestError` for a body the API would reject."""
        ...

    def answer(
        self, request: ModelRequest, extra: Any, response: ModelResponse, request_key: bytes
    ) -> bytes: ...

    def error(self, kind: ErrorKind, message: str) -> bytes: ...

    def malformed(self) -> bytes:
        """A body cut off in the middle, as from a broken proxy."""
        ...

    def rate_headers(
        self,
        requests: WindowState | None,
        tokens: WindowState | None,
        now_epoch_seconds: float,
    ) -> dict[str, str]:
        """The dialect's rate-limit headers for the windows in force (none for ``None``)."""
        ...


def json_bytes(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
