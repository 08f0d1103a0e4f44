"""The OpenAI dialect of the mock server: ``/v1/chat/completions`` and ``/v1/embeddings``.

Requests need ``Authorization: Bearer <key>`` when the server has a key. Errors are
``{"error": {"message", "type", "code"}}``. Rate-limit headers, sent with every answer while an
RPM or TPM window is in force, are ``x-ratelimit-limit-*``, ``x-ratelimit-remaining-*`` and
``x-ratelimit-reset-*`` for ``requests`` and ``tokens``; a reset is the time until the window
is back to its full limit, as a Go duration rounded up to the millisecond (``20ms``, ``1.5s``,
``6m0s``). There is no header for a concurrency limit.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from sluiceway.errors import BadRequestError
from sluiceway.providers.base import ChatMessage, GenerationKind, ModelRequest, ModelResponse
from sluiceway.providers.behaviour import WindowState
from sluiceway.providers.mock_dialect import ErrorKind, json_bytes

_ERROR_CODES = {
    ErrorKind.INVALID_REQUEST: "invalid_request_error",
    ErrorKind.AUTHENTICATION: "invalid_api_key",
    ErrorKind.NOT_FOUND: "not_found",
    ErrorKind.RATE_LIMIT: "rate_limit_exceeded",
    ErrorKind.SERVER: "server_error",
    ErrorKind.OVERLOADED: "server_error",
}


def go_duration(seconds: float) -> str:
    """``seconds`` as Go's ``time.Duration`` prints it, rounded up to the millisecond: ``0s``,
    ``20ms``, ``1.5s``, ``59.866s``, ``6m0s``, ``1h0m0s``."""
    # round() first: 0.02 * 1000 is 20.000000000000004, which must not become 21 ms.
    millis = math.ceil(round(seconds * 1000.0, 6))
    if millis <= 0:
        return "0s"
    if millis < 1000:
        return f"{millis}ms"
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, fraction = divmod(rest, 1000)
    secs = f"{whole}.{fraction:03d}".rstrip("0").rstrip(".") if fraction else str(whole)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


class OpenAIDialect:
    """See the module docstring; stateless."""

    def refusal(self, headers: Mapping[str, str], api_key: str | None) -> tuple[int, bytes] | None:
        if api_key is not None and headers.get("authorization") != f"Bearer {api_key}":
            return 401, self.error(ErrorKind.AUTHENTICATION, "Incorrect API key provided.")
        return None

    def parse(self, path: str, body: bytes) -> tuple[ModelRequest, None]:
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise BadRequestError("the request body is not JSON") from None
        if not isinstance(data, dict) or not isinstance(data.get("model"), str):
            raise BadRequestError("the request body needs a string 'model'")
        model = data["model"]
        if path.endswith("/embeddings"):
            inputs = data.get("input")
            if isinstance(inputs, str):
                inputs = [inputs]
            if not isinstance(inputs, list) or not all(isinstance(t, str) for t in inputs):
                raise BadRequestError("'input' must be a string or a list of strings")
            request = ModelRequest(
                model_id=model, kind=GenerationKind.EMBEDDING, inputs=tuple(inputs)
            )
            return request, None
        raw_messages = data.get("messages")
        if not isinstance(raw_messages, list) or not raw_messages:
            raise BadRequestError("'messages' must be a non-empty list")
        messages = []
        for message in raw_messages:
            if not isinstance(message, dict) or not isinstance(message.get("content"), str):
                raise BadRequestError("every message needs a string 'content'")
            messages.append(
                ChatMessage(role=str(message.get("role", "user")), content=message["content"])
            )
        kind = GenerationKind.TEXT
        schema = None
        response_format = data.get("response_format")
        if isinstance(response_format, dict):
            kind = GenerationKind.STRUCTURED
            json_schema = response_format.get("json_schema")
            if isinstance(json_schema, dict) and isinstance(json_schema.get("schema"), dict):
                schema = json_schema["schema"]
        request = ModelRequest(
            model_id=model, kind=kind, messages=tuple(messages), json_schema=schema
        )
        return request, None

    def answer(
        self, request: ModelRequest, extra: Any, response: ModelResponse, request_key: bytes
    ) -> bytes:
        usage = {
            "prompt_tokens": response.usage.prompt_tokens,
            "completion_tokens": response.usage.completion_tokens,
            "total_tokens": response.usage.total_tokens,
        }
        if request.kind is GenerationKind.EMBEDDING:
            return json_bytes(
                {
                    "object": "list",
                    "model": request.model_id,
                    "data": [
                        {"object": "embedding", "index": i, "embedding": list(vector)}
                        for i, vector in enumerate(response.embeddings)
                    ],
                    "usage": usage,
                }
            )
        return json_bytes(
            {
                "id": "chatcmpl-mock",
                "object": "chat.completion",
                "model": request.model_id,
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": response.text,
                            "reasoning_content": response.reasoning,
                        },
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            }
        )

    def error(self, kind: ErrorKind, message: str) -> bytes:
        code = _ERROR_CODES[kind]
        return json_bytes({"error": {"message": message, "type": code, "code": code}})

    def malformed(self) -> bytes:
        return b'{"id": "chatcmpl-mock", "choices": [{"message": {"content": "trunc'

    def rate_headers(
        self,
        requests: WindowState | None,
        tokens: WindowState | None,
        now_epoch_seconds: float,
    ) -> dict[str, str]:
        headers: dict[str, str] = {}
        if requests is not None:
            headers["x-ratelimit-limit-requests"] = str(requests.limit)
            headers["x-ratelimit-remaining-requests"] = str(requests.remaining)
            headers["x-ratelimit-reset-requests"] = go_duration(requests.reset_seconds)
        if tokens is not None:
            headers["x-ratelimit-limit-tokens"] = str(tokens.limit)
            headers["x-ratelimit-remaining-tokens"] = str(tokens.remaining)
            headers["x-ratelimit-reset-tokens"] = go_duration(tokens.reset_seconds)
        return headers
