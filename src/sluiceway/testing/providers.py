"""A scripted fake provider client for tests: a queue of outcomes, and a record of every request.

Each ``send`` records the request, takes the next step of the script (or the default step) and
plays it: a :class:`Reply` answers, an exception instance is raised, a :class:`Hang` blocks until
the test releases it, a callable computes the answer from the request.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sluiceway.errors import EngineError
from sluiceway.providers.base import ModelRequest, ModelResponse, TokenUsage


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """Answer with this text and/or these embeddings."""

    text: str | None = "ok"
    embeddings: tuple[tuple[float, ...], ...] = ()
    usage: TokenUsage = field(default_factory=TokenUsage)

    def response(self) -> ModelResponse:
        return ModelResponse(text=self.text, embeddings=self.embeddings, usage=self.usage)


@dataclass(eq=False, slots=True, kw_only=True)
class Hang:
    """Block inside ``send`` until ``release()``; then play ``then``.

    ``started`` is set once the request is in flight, so tests order steps on it (no sleeps).
    """

    then: Reply | BaseException = field(default_factory=Reply)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    released: asyncio.Event = field(default_factory=asyncio.Event)

    def release(self) -> None:
        self.released.set()


ScriptStep = Reply | Hang | BaseException | Callable[[ModelRequest], ModelResponse]


class ScriptedProviderClient:
    """A :class:`sluiceway.providers.base.ProviderClient` that plays a script of outcomes.

    With the script empty, ``default`` is played; with no default, ``send`` raises
    :class:`EngineError` (the test under-scripted the provider).
    """

    def __init__(
        self,
        script: Iterable[ScriptStep] = (),
        *,
        name: str = "scripted",
        default: ScriptStep | None = None,
    ) -> None:
        self.name = name
        self.requests: list[ModelRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.closed = False
        self._script: deque[ScriptStep] = deque(script)
        self._default = default

    def push(self, *steps: ScriptStep) -> None:
        """Append steps to the script."""
        self._script.extend(steps)

    @property
    def remaining_steps(self) -> int:
        return len(self._script)

    async def send(self, request: ModelRequest) -> ModelResponse:
        self.requests.append(request)
        if self._script:
            step = self._script.popleft()
        elif self._default is not None:
            step = self._default
        else:
            raise EngineError(
                f"the scripted provider {self.name!r} has no step left for request "
                f"{len(self.requests)}; push more steps or give it a default"
            )
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._play(step, request)
        finally:
            self.in_flight -= 1

    async def aclose(self) -> None:
        self.closed = True

    async def _play(self, step: ScriptStep, request: ModelRequest) -> ModelResponse:
        if isinstance(step, Hang):
            step.started.set()
            await step.released.wait()
            step = step.then
        if isinstance(step, Reply):
            return step.response()
        if isinstance(step, BaseException):
            raise step
        return step(request)
