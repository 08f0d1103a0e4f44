"""The OpenAI-compatible HTTP client (SPEC §7.1): chat completions and embeddings.

Works with any OpenAI-compatible server (OpenAI, vLLM, NIM, OpenRouter, Ollama, the loopback
mock server). Structured requests use ``response_format`` (``json_schema`` when a schema is
given, ``json_object`` otherwise); usage tokens come from the answer's ``usage``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from sluiceway.errors import BadRequestError
from sluiceway.providers.base import GenerationKind, ModelRequest, ModelResponse, TokenUsage
from sluiceway.providers.http_base import HttpProviderBase

DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"


class OpenAICompatibleClient(HttpProviderBase):
    """A :class:`sluiceway.providers.base.ProviderClient` for OpenAI-compatible endpoints.

    ``send`` makes one HTTP request and raises the typed errors of :mod:`sluiceway.errors`
    (rate limited with Retry-After, overload, timeout, unavailable, bad request, context
    length, quota, authentication, redirect). The ``x-ratelimit-*`` headers are read into the
    answer's (or the rate-limit error's) ``rate_limit``. Cancelling ``send`` closes that
    request.
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
        super().__init__(
            name,
            base_url=base_url or DEFAULT_OPENAI_BASE_URL,
            auth_headers={"Authorization": f"Bearer {api_key}"} if api_key else {},
            secret=api_key,
            headers=headers,
            max_connections=max_connections,
            default_timeout_seconds=default_timeout_seconds,
            transport=transport,
        )

    async def send(self, request: ModelRequest) -> ModelResponse:
        if request.kind is GenerationKind.EMBEDDING:
            return await self._embed(request)
        body: dict[str, Any] = dict(request.parameters)
        body["model"] = request.model_id
        body["messages"] = [{"role": m.role, "content": m.content} for m in request.messages]
        if request.kind is not GenerationKind.TEXT and "response_format" not in body:
            if request.json_schema is not None:
                body["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {"name": "output", "schema": dict(request.json_schema)},
                }
            else:
                body["response_format"] = {"type": "json_object"}
        data, rate_limit = await self._post(
            "/chat/completions",
            body,
            model_id=request.model_id,
            timeout_seconds=request.timeout_seconds,
        )
        try:
            message = data["choices"][0]["message"]
            text = message["content"]
        except (KeyError, IndexError, TypeError):
            raise self._malformed(request.model_id, "choices[0].message.content") from None
        if not isinstance(text, str):
            raise self._malformed(request.model_id, "text content")
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        return ModelResponse(
            text=text,
            reasoning=reasoning if isinstance(reasoning, str) else None,
            usage=_usage(data),
            rate_limit=rate_limit,
        )

    async def _embed(self, request: ModelRequest) -> ModelResponse:
        if not request.inputs:
            raise BadRequestError(
                f"provider {self.name!r} model {request.model_id!r}: an embedding request "
                "needs at least one input text"
            )
        body: dict[str, Any] = dict(request.parameters)
        body["model"] = request.model_id
        body["input"] = list(request.inputs)
        data, rate_limit = await self._post(
            "/embeddings", body, model_id=request.model_id, timeout_seconds=request.timeout_seconds
        )
        try:
            items = sorted(data["data"], key=lambda item: item.get("index", 0))
            vectors = tuple(tuple(float(x) for x in item["embedding"]) for item in items)
        except (KeyError, TypeError, ValueError, AttributeError):
            raise self._malformed(request.model_id, "data[].embedding") from None
        return ModelResponse(embeddings=vectors, usage=_usage(data), rate_limit=rate_limit)


def _usage(data: Any) -> TokenUsage:
    usage = data.get("usage") if isinstance(data, dict) else None
    if not isinstance(usage, dict):
        return TokenUsage()
    prompt = usage.get("prompt_tokens", 0)
    completion = usage.get("completion_tokens", 0)
    return TokenUsage(
        prompt_tokens=prompt if isinstance(prompt, int) else 0,
        completion_tokens=completion if isinstance(completion, int) else 0,
    )
