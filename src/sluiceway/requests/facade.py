"""The model calls generators make, by alias: text, structured JSON, judge and embeddings.

:class:`ModelFacade` implements the ``ModelCalls`` protocol of ``sluiceway.columns.base``
(structurally; it does not import it). It builds provider-neutral requests and sends each one
through :meth:`ModelRequestExecutor.execute`; structured re-asks are new requests.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Coroutine, Mapping, Sequence
from types import MappingProxyType
from typing import Any, TypeVar

import jsonschema
from jsonschema.exceptions import SchemaError, ValidationError, best_match
from jsonschema.protocols import Validator

from sluiceway.errors import ConfigError, ConfigIssue, EngineError, NonRetryableGenerationError
from sluiceway.providers.base import ChatMessage, GenerationKind, ModelRequest, ProviderClient
from sluiceway.requests.executor import ModelRequestExecutor
from sluiceway.requests.keys import RequestDomain, RequestResourceResolver, ResolvedModel

T = TypeVar("T")

_STRUCTURED_KINDS = {"structured": GenerationKind.STRUCTURED, "judge": GenerationKind.JUDGE}
_MAX_SCHEMAS_BY_IDENTITY = 1024
_MAX_CONSTRAINT_CHARS = 80


class _SchemaValidators:
    """One compiled validator per distinct schema.

    Looked up by the schema object's identity first (a strong reference keeps the id valid),
    then by canonical JSON, so schemas rebuilt on every call still compile only once.
    """

    def __init__(self) -> None:
        self._by_identity: dict[int, tuple[Mapping[str, Any], Validator]] = {}
        self._by_content: dict[str, Validator] = {}

    def get(self, schema: Mapping[str, Any], alias: str) -> Validator:
        entry = self._by_identity.get(id(schema))
        if entry is not None and entry[0] is schema:
            return entry[1]
        try:
            content = json.dumps(schema, sort_keys=True, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            raise _schema_error(alias, f"it is not JSON-serializable ({exc})") from exc
        validator = self._by_content.get(content)
        if validator is None:
            plain = dict(schema)
            validator_class = jsonschema.validators.validator_for(plain)
            try:
                validator_class.check_schema(plain)
            except SchemaError as exc:
                raise _schema_error(alias, exc.message) from exc
            validator = validator_class(plain)
            self._by_content[content] = validator
        if len(self._by_identity) >= _MAX_SCHEMAS_BY_IDENTITY:
            del self._by_identity[next(iter(self._by_identity))]
        self._by_identity[id(schema)] = (schema, validator)
        return validator


def _schema_error(alias: str, problem: str) -> ConfigError:
    return ConfigError(
        [
            ConfigIssue(
                path=f"schema for model alias {alias!r}",
                message=f"the JSON schema is invalid: {problem.splitlines()[0]}",
                hint="fix the column's output schema",
            )
        ]
    )


def _first_line(text: str) -> str:
    return text.splitlines()[0] if text else text


def _strip_code_fence(text: str) -> str:
    stripped = text.strip()
    if stripped.startswith("```") and stripped.endswith("```") and len(stripped) >= 6:
        body = stripped[3:-3]
        newline = body.find("\n")
        if newline >= 0 and not body[:newline].strip().startswith(("{", "[")):
            body = body[newline + 1 :]  # drop the language tag (```json)
        return body.strip()
    return stripped


def _safe_constraint(error: ValidationError) -> str:
    text = repr(error.validator_value)
    if len(text) > _MAX_CONSTRAINT_CHARS:
        text = text[: _MAX_CONSTRAINT_CHARS - 3] + "..."
    return _first_line(text)


class ModelFacade:
    """Model calls by alias for generators; see ``sluiceway.columns.base.ModelCalls``.

    Async methods must run on the engine's loop. ``*_sync`` methods block the calling worker
    thread until the call finishes on the loop; calling them on the loop's own thread raises
    :class:`EngineError` (it would deadlock). Errors: :class:`ConfigError` for an unknown alias
    or an invalid schema, :class:`NonRetryableGenerationError` for answers that stay invalid
    and for exhausted retry budgets (from the executor).
    """

    def __init__(
        self,
        resolver: RequestResourceResolver,
        clients: Mapping[str, ProviderClient],
        executor: ModelRequestExecutor,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._resolver = resolver
        self._clients = dict(clients)
        self._executor = executor
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
        self._loop = loop
        self._validators = _SchemaValidators()

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Set the loop the ``*_sync`` methods submit to (when built outside the loop)."""
        self._loop = loop

    # -- async -------------------------------------------------------------------------------

    async def generate_text(
        self,
        alias: str,
        prompt: str,
        *,
        system_prompt: str | None = None,
        parameters: Mapping[str, Any] | None = None,
    ) -> str:
        text, _ = await self.generate_text_with_reasoning(
            alias, prompt, system_prompt=system_prompt, parameters=parameters
        )
        return text

    async def generate_text_with_reasoning(
        self,
        alias: str,
        prompt: str,
        *,
        system_prompt: str | None = None,
        parameters: Mapping[str, Any] | None = None,
    ) -> tuple[str, str | None]:
        model = self._resolver.resolve(alias)
        request = ModelRequest(
            model_id=model.model_id,
            kind=GenerationKind.TEXT,
            messages=self._messages(prompt, system_prompt),
            parameters=self._parameters(model, parameters),
            timeout_seconds=model.timeout_seconds,
        )
        response = await self._executor.execute(
            self._resolver.resource_for(alias, RequestDomain.CHAT), self._client(model), request
        )
        if response.text is None:
            raise NonRetryableGenerationError(
                f"model alias {alias!r} ({model.key}) answered a text request without text; "
                f"the {model.provider!r} provider client must map such answers to an error"
            )
        return response.text, response.reasoning

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
        kind = _STRUCTURED_KINDS.get(generation_kind)
        if kind is None:
            raise NonRetryableGenerationError(
                f"generate_structured for model alias {alias!r} got generation_kind="
                f"{generation_kind!r}; use one of {sorted(_STRUCTURED_KINDS)}"
            )
        if max_reasks < 0:
            raise NonRetryableGenerationError(
                f"generate_structured for model alias {alias!r} got max_reasks={max_reasks}; "
                "use 0 (no re-ask) or more"
            )
        model = self._resolver.resolve(alias)
        validator = self._validators.get(schema, alias)
        resource = self._resolver.resource_for(alias, RequestDomain.CHAT)
        client = self._client(model)
        merged = self._parameters(model, parameters)
        messages = list(self._messages(prompt, system_prompt))
        problem = ""
        for _ in range(max_reasks + 1):
            request = ModelRequest(
                model_id=model.model_id,
                kind=kind,
                messages=tuple(messages),
                json_schema=schema,
                parameters=merged,
                timeout_seconds=model.timeout_seconds,
            )
            response = await self._executor.execute(resource, client, request)
            answer = response.text or ""
            value, problem, correction = self._check(answer, validator)
            if value is not None:
                return value
            # A re-ask is a new request: the conversation grows by the bad answer and a fix-up.
            messages.append(ChatMessage(role="assistant", content=answer))
            messages.append(
                ChatMessage(
                    role="user",
                    content=(
                        f"Your previous answer was invalid: {correction}. Reply again with only "
                        "a JSON object that matches the requested schema."
                    ),
                )
            )
        raise NonRetryableGenerationError(
            f"model alias {alias!r} ({model.key}): the structured answer was still invalid after "
            f"{max_reasks} re-ask(s); last problem: {problem}"
        )

    async def embed(self, alias: str, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        model = self._resolver.resolve(alias)
        request = ModelRequest(
            model_id=model.model_id,
            kind=GenerationKind.EMBEDDING,
            inputs=tuple(texts),
            parameters=self._parameters(model, None),
            timeout_seconds=model.timeout_seconds,
        )
        response = await self._executor.execute(
            self._resolver.resource_for(alias, RequestDomain.EMBEDDING),
            self._client(model),
            request,
        )
        if len(response.embeddings) != len(texts):
            raise NonRetryableGenerationError(
                f"model alias {alias!r} ({model.key}) returned {len(response.embeddings)} "
                f"embedding(s) for {len(texts)} input(s); the provider answer is incomplete"
            )
        return [list(vector) for vector in response.embeddings]

    # -- sync (worker threads) ---------------------------------------------------------------

    def generate_text_sync(
        self,
        alias: str,
        prompt: str,
        *,
        system_prompt: str | None = None,
        parameters: Mapping[str, Any] | None = None,
    ) -> str:
        return self._run_sync(
            "generate_text_sync",
            self.generate_text(alias, prompt, system_prompt=system_prompt, parameters=parameters),
        )

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
        return self._run_sync(
            "generate_structured_sync",
            self.generate_structured(
                alias,
                prompt,
                schema,
                system_prompt=system_prompt,
                max_reasks=max_reasks,
                parameters=parameters,
            ),
        )

    def embed_sync(self, alias: str, texts: Sequence[str]) -> list[list[float]]:
        return self._run_sync("embed_sync", self.embed(alias, texts))

    # -- internals ---------------------------------------------------------------------------

    def _run_sync(self, method: str, coro: Coroutine[Any, Any, T]) -> T:
        loop = self._loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is None or (running is not None and running is loop):
            coro.close()
            if loop is None:
                raise EngineError(
                    f"ModelFacade.{method} has no event loop to run on; build the facade inside "
                    "the engine's loop or pass loop=..."
                )
            raise EngineError(
                f"ModelFacade.{method} was called on the event loop's own thread "
                f"({threading.current_thread().name}), which would deadlock; await the async "
                "method instead, or run the synchronous code in a worker thread "
                "(asyncio.to_thread)"
            )
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    def _client(self, model: ResolvedModel) -> ProviderClient:
        client = self._clients.get(model.provider)
        if client is None:
            known = ", ".join(repr(name) for name in sorted(self._clients)) or "none"
            raise EngineError(
                f"no provider client for provider {model.provider!r} (model alias "
                f"{model.alias!r}); clients exist for: {known}; the engine must build one client "
                "per configured provider"
            )
        return client

    @staticmethod
    def _messages(prompt: str, system_prompt: str | None) -> tuple[ChatMessage, ...]:
        user = ChatMessage(role="user", content=prompt)
        if system_prompt:
            return (ChatMessage(role="system", content=system_prompt), user)
        return (user,)

    @staticmethod
    def _parameters(model: ResolvedModel, overrides: Mapping[str, Any] | None) -> Mapping[str, Any]:
        if not overrides:
            return model.parameters
        return MappingProxyType({**model.parameters, **overrides})

    @staticmethod
    def _check(answer: str, validator: Validator) -> tuple[dict[str, Any] | None, str, str]:
        """``(value, problem, correction)``: the parsed object, or why it is unusable.

        ``problem`` never quotes the answer (it ends up in logs and reports); ``correction``
        goes back to the model only and may.
        """
        # A degenerate answer (``[`` thousands of times) exhausts the decoder's recursion,
        # and a deep but decodable one may exhaust the validator's: both are invalid answers.
        too_deep = "JSON nested too deeply to decode; reply with a flat JSON object"
        try:
            value = json.loads(_strip_code_fence(answer))
        except json.JSONDecodeError as exc:
            problem = f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
            return None, problem, problem
        except RecursionError:
            return None, too_deep, too_deep
        if not isinstance(value, dict):
            problem = f"a JSON {type(value).__name__}, not a JSON object"
            return None, problem, problem
        try:
            error = best_match(validator.iter_errors(value))
        except RecursionError:
            return None, too_deep, too_deep
        if error is None:
            return value, "", ""
        problem = (
            f"does not match the schema at {error.json_path}: the {error.validator!r} "
            f"constraint {_safe_constraint(error)} failed"
        )
        return None, problem, _first_line(error.message)
