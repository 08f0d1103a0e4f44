"""Provider-neutral request and response values and the client protocol every provider implements.

A client performs exactly one outbound attempt per call: no retries underneath. Failures are
raised as the typed errors of :mod:`sluiceway.errors` (mapped at the client boundary).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from sluiceway.rate_limits import RateLimitHeaders
from sluiceway.values import fast_init


class GenerationKind(enum.Enum):
    """What a request asks the model for; part of a model task's scheduling identity."""

    TEXT = "text"
    STRUCTURED = "structured"
    JUDGE = "judge"
    EMBEDDING = "embedding"


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class ChatMessage:
    role: str
    content: str


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class ModelRequest:
    """One concrete request to one model endpoint.

    ``json_schema`` asks for JSON output that validates against it (structured and judge
    columns); ``inputs`` is set instead of ``messages`` for embeddings.
    """

    model_id: str
    kind: GenerationKind
    messages: tuple[ChatMessage, ...] = ()
    inputs: tuple[str, ...] = ()
    json_schema: Mapping[str, Any] | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)
    timeout_seconds: float | None = None


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class TokenUsage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class ModelResponse:
    """A successful answer: ``text`` for chat kinds, ``embeddings`` for embedding requests.

    ``rate_limit`` holds the rate-limit windows the answer reported (HTTP clients read them
    from its headers), ``None`` when it reported none.
    """

    text: str | None = None
    embeddings: tuple[tuple[float, ...], ...] = ()
    usage: TokenUsage = field(default_factory=TokenUsage)
    reasoning: str | None = None
    rate_limit: RateLimitHeaders | None = None


class ProviderClient(Protocol):
    """One outbound attempt per call; raise a :class:`sluiceway.errors.ProviderError` on failure."""

    name: str

    async def send(self, request: ModelRequest) -> ModelResponse: ...

    async def aclose(self) -> None: ...
