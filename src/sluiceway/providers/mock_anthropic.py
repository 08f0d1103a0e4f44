"""The Anthropic dialect of the mock server: ``POST /v1/messages``.

Requests need an ``anthropic-version`` header, and ``x-api-key: <key>`` when the server has a
key. The body needs ``model``, ``max_tokens`` and ``messages`` (string content or text
blocks); ``system`` is a string or text blocks. A structured answer (JSON valid for a schema)
is given when the request forces a tool (``tool_choice`` ``tool`` or ``any``: the answer is a
``tool_use`` block whose ``input`` matches the tool's ``input_schema``), asks for
``output_format: {"type": "json_schema", "schema": ...}``, or, as a model would follow it, has
a system prompt naming a "JSON schema" followed by that schema. ``thinking: {"type":
"enabled"}`` adds a thinking block. A text answer longer than ``max_tokens`` is cut
(``stop_reason: max_tokens``).

Errors are ``{"type": "error", "error": {"type", "message"}}`` (``rate_limit_error``,
``overloaded_error`` for 503 and 529, ``api_error``, ...). While an RPM or TPM window is in
force every answer carries ``anthropic-ratelimit-requests-{limit,remaining,reset}`` and
``anthropic-ratelimit-tokens-*``; the mock has one token window for input and output tokens,
so ``anthropic-ratelimit-input-tokens-*`` and ``-output-tokens-*`` describe that same window.
A reset is when the window is back to its full limit, an RFC 3339 UTC time rounded up to the
second (``2025-01-10T18:52:31Z``).
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sluiceway.errors import BadRequestError
from sluiceway.providers.base import ChatMessage, GenerationKind, ModelRequest, ModelResponse
from sluiceway.providers.behaviour import WindowState
from sluiceway.providers.mock_dialect import ErrorKind, json_bytes

_ERROR_TYPES = {
    ErrorKind.INVALID_REQUEST: "invalid_request_error",
    ErrorKind.AUTHENTICATION: "authentication_error",
    ErrorKind.NOT_FOUND: "not_found_error",
    ErrorKind.RATE_LIMIT: "rate_limit_error",
    ErrorKind.SERVER: "api_error",
    ErrorKind.OVERLOADED: "overloaded_error",
}
_SCHEMA_MARKER = "JSON schema"
_ROLES = frozenset({"user", "assistant"})
# One token window: the input and output variants describe the same one.
_TOKEN_HEADER_PREFIXES = (
    "anthropic-ratelimit-tokens",
    "anthropic-ratelimit-input-tokens",
    "anthropic-ratelimit-output-tokens",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class MessagesAsk:
    """What an answer needs beyond the :class:`ModelRequest`."""

    max_tokens: int
    tool_name: str | None = None  # answer with a tool_use block of this tool
    thinking: bool = False


def rfc3339_utc(epoch_seconds: float) -> str:
    """An RFC 3339 UTC time rounded up to the second, e.g. ``2025-01-10T18:52:31Z``."""
    moment = datetime.datetime.fromtimestamp(math.ceil(epoch_seconds), tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _text_of(content: Any, where: str) -> str:
    """The text of a string or of a list of content blocks (text, tool results)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadRequestError(f"{where}: content must be a string or a list of content blocks")
    parts: list[str] = []
    for block in content:
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise BadRequestError(f"{where}: every content block needs a string 'type'")
        if isinstance(block.get("text"), str):
            parts.append(block["text"])
        elif block["type"] == "tool_result":
            parts.append(_text_of(block.get("content", ""), where))
    return "\n".join(parts)


def _forced_tool(data: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(name, input schema) of the tool the request forces, if it forces one."""
    choice = data.get("tool_choice")
    tools = data.get("tools")
    if not isinstance(choice, dict) or not isinstance(tools, list) or not tools:
        return None
    wanted = choice.get("name") if choice.get("type") == "tool" else None
    if choice.get("type") not in ("tool", "any"):
        return None
    for tool in tools:
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise BadRequestError("tools: every tool needs a string 'name'")
        if wanted is None or tool["name"] == wanted:
            schema = tool.get("input_schema")
            if not isinstance(schema, dict):
                raise BadRequestError(f"tools.{tool['name']}: input_schema must be an object")
            return tool["name"], schema
    raise BadRequestError(f"tool_choice names tool {wanted!r}, which is not in 'tools'")


def _schema_in_prompt(system: str) -> dict[str, Any] | None:
    """The JSON object that follows the last "JSON schema" in a system prompt, if any."""
    at = system.rfind(_SCHEMA_MARKER)
    if at < 0:
        return None
    start = system.find("{", at)
    if start < 0:
        return None
    try:
        schema, _ = json.JSONDecoder().raw_decode(system, start)
    except ValueError:
        return None
    return schema if isinstance(schema, dict) else None


class AnthropicDialect:
    """See the module docstring; stateless."""

    def refusal(self, headers: Mapping[str, str], api_key: str | None) -> tuple[int, bytes] | None:
        if api_key is not None and headers.get("x-api-key") != api_key:
            return 401, self.error(ErrorKind.AUTHENTICATION, "invalid x-api-key")
        if not headers.get("anthropic-version"):
            return 400, self.error(
                ErrorKind.INVALID_REQUEST, "anthropic-version: header is required"
            )
        return None

    def parse(self, path: str, body: bytes) -> tuple[ModelRequest, MessagesAsk]:
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise BadRequestError("the request body is not JSON") from None
        if not isinstance(data, dict) or not isinstance(data.get("model"), str):
            raise BadRequestError("model: a string is required")
        max_tokens = data.get("max_tokens")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise BadRequestError("max_tokens: an integer >= 1 is required")
        raw_messages = data.get("messages")
        if not isinstance(raw_messages, list) or not raw_messages:
            raise BadRequestError("messages: a non-empty list is required")
        messages: list[ChatMessage] = []
        system = data.get("system")
        if system is not None:
            messages.append(ChatMessage(role="system", content=_text_of(system, "system")))
        for index, message in enumerate(raw_messages):
            if not isinstance(message, dict) or message.get("role") not in _ROLES:
                raise BadRequestError(f"messages.{index}: role must be 'user' or 'assistant'")
            content = _text_of(message.get("content"), f"messages.{index}")
            messages.append(ChatMessage(role=message["role"], content=content))
        kind = GenerationKind.TEXT
        schema: dict[str, Any] | None = None
        tool_name: str | None = None
        forced = _forced_tool(data)
        output_format = data.get("output_format")
        if forced is not None:
            kind = GenerationKind.STRUCTURED
            tool_name, schema = forced
        elif isinstance(output_format, dict) and output_format.get("type") == "json_schema":
            kind = GenerationKind.STRUCTURED
            if isinstance(output_format.get("schema"), dict):
                schema = output_format["schema"]
        elif system is not None and _SCHEMA_MARKER in messages[0].content:
            kind = GenerationKind.STRUCTURED
            schema = _schema_in_prompt(messages[0].content)
        thinking = data.get("thinking")
        ask = MessagesAsk(
            max_tokens=max_tokens,
            tool_name=tool_name,
            thinking=isinstance(thinking, dict) and thinking.get("type") == "enabled",
        )
        request = ModelRequest(
            model_id=data["model"], kind=kind, messages=tuple(messages), json_schema=schema
        )
        return request, ask

    def answer(
        self, request: ModelRequest, extra: Any, response: ModelResponse, request_key: bytes
    ) -> bytes:
        ask: MessagesAsk = extra
        tag = request_key.hex()
        content: list[dict[str, Any]] = []
        if ask.thinking and response.reasoning:
            content.append(
                {"type": "thinking", "thinking": response.reasoning, "signature": f"mock{tag}"}
            )
        output_tokens = response.usage.completion_tokens
        stop_reason = "end_turn"
        text = response.text or ""
        if ask.tool_name is not None:
            content.append(
                {
                    "type": "tool_use",
                    "id": f"toolu_mock{tag[:20]}",
                    "name": ask.tool_name,
                    "input": json.loads(text),
                }
            )
            stop_reason = "tool_use"
        else:
            if output_tokens > ask.max_tokens:
                # About 3 words per 4 tokens, as the behaviour model counts them.
                text = " ".join(text.split(" ")[: max(1, ask.max_tokens * 3 // 4)])
                output_tokens = ask.max_tokens
                stop_reason = "max_tokens"
            content.append({"type": "text", "text": text})
        return json_bytes(
            {
                "id": f"msg_mock{tag[:24]}",
                "type": "message",
                "role": "assistant",
                "model": request.model_id,
                "content": content,
                "stop_reason": stop_reason,
                "stop_sequence": None,
                "usage": {
                    "input_tokens": response.usage.prompt_tokens,
                    "output_tokens": output_tokens,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                },
            }
        )

    def error(self, kind: ErrorKind, message: str) -> bytes:
        return json_bytes(
            {"type": "error", "error": {"type": _ERROR_TYPES[kind], "message": message}}
        )

    def malformed(self) -> bytes:
        return b'{"id": "msg_mock", "type": "message", "content": [{"type": "text", "text": "tru'

    def rate_headers(
        self,
        requests: WindowState | None,
        tokens: WindowState | None,
        now_epoch_seconds: float,
    ) -> dict[str, str]:
        headers: dict[str, str] = {}
        if requests is not None:
            headers["anthropic-ratelimit-requests-limit"] = str(requests.limit)
            headers["anthropic-ratelimit-requests-remaining"] = str(requests.remaining)
            reset = rfc3339_utc(now_epoch_seconds + requests.reset_seconds)
            headers["anthropic-ratelimit-requests-reset"] = reset
        if tokens is not None:
            limit = str(tokens.limit)
            remaining = str(tokens.remaining)
            reset = rfc3339_utc(now_epoch_seconds + tokens.reset_seconds)
            for prefix in _TOKEN_HEADER_PREFIXES:
                headers[f"{prefix}-limit"] = limit
                headers[f"{prefix}-remaining"] = remaining
                headers[f"{prefix}-reset"] = reset
        return headers
