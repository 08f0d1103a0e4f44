"""The Anthropic messages client (SPEC §7.2): ``/v1/messages`` with the facade's semantics.

System messages become the top-level ``system`` field; structured requests ask for a JSON
object matching the schema in the system prompt (the facade validates and re-asks).
Embeddings are not offered by this API and are refused as a bad request.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import httpx

from sluiceway.errors import BadRequestError
from sluiceway.providers.base import GenerationKind, ModelRequest, ModelResponse, TokenUsage
from sluiceway.providers.http_base import HttpProviderBase

DEFAULT_ANTHROPIC_BASE_URL = "https://api.anthropic.com/v1"
ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 1024


class AnthropicClient(HttpProviderBase):
    """A :class:`sluiceway.providers.base.ProviderClient` for the Anthropic messages API.

    Raises the same typed errors as the OpenAI-compatible client; 529 ``overloaded_error`` is
    rate pressure (:class:`sluiceway.errors.ProviderOverloadedError`). The
    ``anthropic-ratelimit-*`` headers are read into the answer's (or the rate-limit error's)
    ``rate_limit``, their RFC 3339 resets as seconds from the wall clock.
    """

    def __init__(
        self,
        name: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        max_connections: int = 64,
        default_timeout_seconds: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        auth = {"anthropic-version": ANTHROPIC_VERSION}
        if api_key:
            auth["x-api-key"] = api_key
        super().__init__(
            name,
            base_url=base_url or DEFAULT_ANTHROPIC_BASE_URL,
            auth_headers=auth,
            secret=api_key,
            headers=headers,
            max_connections=max_connections,
            default_timeout_seconds=default_timeout_seconds,
            transport=transport,
        )

    async def send(self, request: ModelRequest) -> ModelResponse:
        if request.kind is GenerationKind.EMBEDDING:
            raise BadRequestError(
                f"provider {self.name!r} (anthropic) has no embeddings endpoint; point the "
                "embedding column at an OpenAI-compatible provider"
            )
        system = [m.content for m in request.messages if m.role == "system"]
        if request.kind is not GenerationKind.TEXT:
            schema = request.json_schema or {"type": "object"}
            system.append(
                "Reply with only a JSON object that matches this JSON schema, no prose: "
                + json.dumps(schema, sort_keys=True)
            )
        body: dict[str, Any] = {"max_tokens": DEFAULT_MAX_TOKENS, **dict(request.parameters)}
        body["model"] = request.model_id
        body["messages"] = [
            {"role": m.role, "content": m.content} for m in request.messages if m.role != "system"
        ]
        if system:
            body["system"] = "\n\n".join(system)
        data, rate_limit = await self._post(
            "/messages", body, model_id=request.model_id, timeout_seconds=request.timeout_seconds
        )
        try:
            blocks = data["content"]
            text = "".join(b["text"] for b in blocks if b.get("type") == "text")
            thinking = "".join(b.get("thinking", "") for b in blocks if b.get("type") == "thinking")
        except (KeyError, TypeError, AttributeError):
            raise self._malformed(request.model_id, "content[].text") from None
        usage = data.get("usage") if isinstance(data, dict) else None
        prompt = usage.get("input_tokens", 0) if isinstance(usage, dict) else 0
        completion = usage.get("output_tokens", 0) if isinstance(usage, dict) else 0
        return ModelResponse(
            text=text,
            reasoning=thinking or None,
            usage=TokenUsage(
                prompt_tokens=prompt if isinstance(prompt, int) else 0,
                completion_tokens=completion if isinstance(completion, int) else 0,
            ),
            rate_limit=rate_limit,
        )
