"""A fake ``ModelCalls`` for generator tests: records every call and answers deterministically.

Text answers are ``"[alias] prompt"``, structured answers are a minimal instance of the schema
(see :func:`schema_instance`), embeddings a hash of the text. Answers can be replaced per test,
and an alias can be scripted to raise.
"""

from __future__ import annotations

import enum
import hashlib
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any


class FakeCallMethod(enum.Enum):
    GENERATE_TEXT = "generate_text"
    GENERATE_STRUCTURED = "generate_structured"
    EMBED = "embed"


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordedModelCall:
    """One call as the fake saw it. ``is_sync`` marks the ``*_sync`` variants; ``thread_id`` is
    the thread that made the call."""

    method: FakeCallMethod
    alias: str
    prompt: str | None = None
    system_prompt: str | None = None
    parameters: Mapping[str, Any] | None = None
    schema: Mapping[str, Any] | None = None
    max_reasks: int | None = None
    generation_kind: str | None = None
    texts: tuple[str, ...] = ()
    is_sync: bool = False
    thread_id: int = 0


TextAnswer = Callable[[str, str], str]
"""``(alias, prompt) -> text``."""
StructuredAnswer = Callable[[str, Mapping[str, Any]], dict[str, Any]]
"""``(alias, schema) -> object``."""


class FakeModelCalls:
    """Implements ``sluiceway.columns.base.ModelCalls`` without a provider.

    Never blocks. ``failures[alias]`` is raised (the same instance) by every call to that alias.
    Safe to call from worker threads: each call appends one record to ``calls``.
    """

    def __init__(
        self,
        *,
        text_answer: TextAnswer | None = None,
        structured_answer: StructuredAnswer | None = None,
        embedding_dimensions: int = 4,
        failures: Mapping[str, BaseException] | None = None,
    ) -> None:
        self.calls: list[RecordedModelCall] = []
        self._text_answer = text_answer or _default_text
        self._structured_answer = structured_answer or _default_structured
        self._dimensions = embedding_dimensions
        self._failures = dict(failures or {})
        self._lock = threading.Lock()

    def calls_to(self, method: FakeCallMethod) -> list[RecordedModelCall]:
        """The recorded calls of one method (async and sync variants), in call order."""
        return [call for call in self.calls if call.method is method]

    # -- async -------------------------------------------------------------------------------

    async def generate_text(
        self,
        alias: str,
        prompt: str,
        *,
        system_prompt: str | None = None,
        parameters: Mapping[str, Any] | None = None,
    ) -> str:
        return self._text(alias, prompt, system_prompt, parameters, is_sync=False)

    async def generate_text_with_reasoning(
        self,
        alias: str,
        prompt: str,
        *,
        system_prompt: str | None = None,
        parameters: Mapping[str, Any] | None = None,
    ) -> tuple[str, str | None]:
        """The fake text plus a fixed trace, ``"reasoning for <alias>"``."""
        text = self._text(alias, prompt, system_prompt, parameters, is_sync=False)
        return text, f"reasoning for {alias}"

    async def generate_structured(
        self,
        alias: str,
        prompt: str,
        schema: Mapping[str, Any],
        *,
        system_prompt: str | None = None,
        max_reasks: int = 2,
        generation_kind: str = "structured",
        parameters: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        return self._structured(
            alias,
            prompt,
            schema,
            system_prompt,
            max_reasks,
            generation_kind,
            parameters,
            is_sync=False,
        )

    async def embed(self, alias: str, texts: Sequence[str]) -> list[list[float]]:
        return self._embed(alias, texts, is_sync=False)

    # -- sync --------------------------------------------------------------------------------

    def generate_text_sync(
        self,
        alias: str,
        prompt: str,
        *,
        system_prompt: str | None = None,
        parameters: Mapping[str, Any] | None = None,
    ) -> str:
        return self._text(alias, prompt, system_prompt, parameters, is_sync=True)

    def generate_structured_sync(
        self,
        alias: str,
        prompt: str,
        schema: Mapping[str, Any],
        *,
        system_prompt: str | None = None,
        max_reasks: int = 2,
        parameters: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        return self._structured(
            alias, prompt, schema, system_prompt, max_reasks, "structured", parameters, is_sync=True
        )

    def embed_sync(self, alias: str, texts: Sequence[str]) -> list[list[float]]:
        return self._embed(alias, texts, is_sync=True)

    # -- internals ---------------------------------------------------------------------------

    def _text(
        self,
        alias: str,
        prompt: str,
        system_prompt: str | None,
        parameters: Mapping[str, Any] | None,
        *,
        is_sync: bool,
    ) -> str:
        self._record(
            RecordedModelCall(
                method=FakeCallMethod.GENERATE_TEXT,
                alias=alias,
                prompt=prompt,
                system_prompt=system_prompt,
                parameters=None if parameters is None else MappingProxyType(dict(parameters)),
                is_sync=is_sync,
                thread_id=threading.get_ident(),
            )
        )
        return self._text_answer(alias, prompt)

    def _structured(
        self,
        alias: str,
        prompt: str,
        schema: Mapping[str, Any],
        system_prompt: str | None,
        max_reasks: int,
        generation_kind: str,
        parameters: Mapping[str, Any] | None,
        *,
        is_sync: bool,
    ) -> dict[str, Any]:
        self._record(
            RecordedModelCall(
                method=FakeCallMethod.GENERATE_STRUCTURED,
                alias=alias,
                prompt=prompt,
                system_prompt=system_prompt,
                schema=schema,
                max_reasks=max_reasks,
                generation_kind=generation_kind,
                parameters=None if parameters is None else MappingProxyType(dict(parameters)),
                is_sync=is_sync,
                thread_id=threading.get_ident(),
            )
        )
        return self._structured_answer(alias, schema)

    def _embed(self, alias: str, texts: Sequence[str], *, is_sync: bool) -> list[list[float]]:
        self._record(
            RecordedModelCall(
                method=FakeCallMethod.EMBED,
                alias=alias,
                texts=tuple(texts),
                is_sync=is_sync,
                thread_id=threading.get_ident(),
            )
        )
        return [text_vector(text, self._dimensions) for text in texts]

    def _record(self, call: RecordedModelCall) -> None:
        with self._lock:
            self.calls.append(call)
        failure = self._failures.get(call.alias)
        if failure is not None:
            raise failure


def _default_text(alias: str, prompt: str) -> str:
    return f"[{alias}] {prompt}"


def _default_structured(alias: str, schema: Mapping[str, Any]) -> dict[str, Any]:
    value = schema_instance(schema)
    if not isinstance(value, dict):
        raise TypeError(f"schema for alias {alias!r} does not describe an object: {schema!r}")
    return value


def text_vector(text: str, dimensions: int) -> list[float]:
    """A deterministic vector in ``[-1, 1)`` per coordinate, from a hash of ``text``."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=2 * dimensions).digest()
    return [
        int.from_bytes(digest[2 * i : 2 * i + 2], "little") / 32768.0 - 1.0
        for i in range(dimensions)
    ]


def schema_instance(schema: Mapping[str, Any]) -> Any:
    """A minimal value that satisfies simple JSON schemas.

    Rules: ``const``, then the first ``enum`` value, then the first ``anyOf``/``oneOf`` branch;
    objects get every listed property; integers and numbers their lower bound (else 0); strings
    ``"x"`` repeated to ``minLength`` (at least one); booleans ``True``; arrays ``minItems`` copies
    of their item instance; ``null`` is ``None``. ``$ref`` and formats are not supported.
    """
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            return schema_instance(schema[key][0])
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        properties: Mapping[str, Any] = schema.get("properties", {})
        return {name: schema_instance(sub) for name, sub in properties.items()}
    if kind in ("integer", "number"):
        return _lower_bound(schema, integer=kind == "integer")
    if kind == "boolean":
        return True
    if kind == "array":
        item = schema_instance(schema.get("items", {"type": "string"}))
        return [item] * int(schema.get("minItems", 0))
    if kind == "null":
        return None
    return "x" * max(1, int(schema.get("minLength", 1)))


def _lower_bound(schema: Mapping[str, Any], *, integer: bool) -> int | float:
    if "minimum" in schema:
        value: float = schema["minimum"]
    elif "exclusiveMinimum" in schema:
        value = schema["exclusiveMinimum"] + (1 if integer else 1e-9)
    elif "maximum" in schema:
        value = min(0, schema["maximum"])
    else:
        value = 0
    return math.ceil(value) if integer else float(value)
