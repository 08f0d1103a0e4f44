"""The model facade: request building, structured re-asks, embeddings and the sync variants."""

from __future__ import annotations

import asyncio
import inspect
import random
from typing import Any

import pytest

from sluiceway.columns.base import ModelCalls
from sluiceway.errors import ConfigError, EngineError, NonRetryableGenerationError
from sluiceway.providers.base import GenerationKind, ModelRequest, ModelResponse
from sluiceway.requests import (
    ModelFacade,
    ModelRequestExecutor,
    ModelSpec,
    RequestAdmissionController,
    RequestDomain,
    RequestResourceResolver,
    RetryPolicy,
)
from sluiceway.requests.facade import _SchemaValidators
from sluiceway.testing.providers import Reply, ScriptedProviderClient

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"score": {"type": "integer"}},
    "required": ["score"],
}


class Harness:
    def __init__(self, client: ScriptedProviderClient, *, outside_loop: bool = False) -> None:
        self.client = client
        self.resolver = RequestResourceResolver(
            [
                ModelSpec(
                    alias="writer",
                    provider="sim",
                    model="m-1",
                    max_parallel_requests=4,
                    timeout_seconds=30,
                    parameters={"temperature": 0.5, "max_tokens": 100},
                ),
                ModelSpec(
                    alias="embedder",
                    provider="sim",
                    model="e-1",
                    max_parallel_requests=2,
                    timeout_seconds=10,
                ),
            ]
        )
        self.controller = RequestAdmissionController(self.resolver.static_caps())
        self.executor = ModelRequestExecutor(
            self.controller, retry=RetryPolicy(), rng=random.Random(0), clock=lambda: 0.0
        )
        self.facade = ModelFacade(self.resolver, {"sim": client}, self.executor)
        assert outside_loop or self.facade._loop is not None

    def granted(self, domain: RequestDomain = RequestDomain.CHAT) -> int:
        key = self.resolver.resolve("writer" if domain is RequestDomain.CHAT else "embedder").key
        stats = self.controller.statistics().provider_models[key]
        return stats.domains[domain].granted_total if domain in stats.domains else 0


def _as_model_calls(facade: ModelFacade) -> ModelCalls:
    return facade  # checked by mypy: the facade satisfies the protocol


def test_the_facade_matches_the_model_calls_protocol_signatures() -> None:
    names = [
        name
        for name, value in vars(ModelCalls).items()
        if inspect.isfunction(value) and not name.startswith("_")
    ]
    assert len(names) == 7
    for name in names:
        expected = inspect.signature(getattr(ModelCalls, name))
        actual = inspect.signature(getattr(ModelFacade, name))
        assert str(actual) == str(expected), name


async def test_text_requests_merge_parameters_and_carry_the_model_timeout() -> None:
    harness = Harness(ScriptedProviderClient([Reply(text="a poem")]))
    text = await harness.facade.generate_text(
        "writer", "Write a poem", system_prompt="Be brief", parameters={"temperature": 0.9}
    )
    assert text == "a poem"
    (request,) = harness.client.requests
    assert request.model_id == "m-1"
    assert request.kind is GenerationKind.TEXT
    assert [(m.role, m.content) for m in request.messages] == [
        ("system", "Be brief"),
        ("user", "Write a poem"),
    ]
    assert request.parameters == {"temperature": 0.9, "max_tokens": 100}
    assert request.timeout_seconds == 30.0
    assert request.json_schema is None
    assert harness.granted() == 1


async def test_structured_reasks_are_new_requests_and_separate_attempts() -> None:
    harness = Harness(
        ScriptedProviderClient(
            [
                Reply(text="not json at all"),
                Reply(text='{"score": "high"}'),
                Reply(text='```json\n{"score": 4}\n```'),
            ]
        )
    )
    value = await harness.facade.generate_structured("writer", "Rate it", SCHEMA, max_reasks=2)

    assert value == {"score": 4}
    requests = harness.client.requests
    assert len(requests) == 3
    assert [len(r.messages) for r in requests] == [1, 3, 5]
    assert len({r.messages for r in requests}) == 3
    assert all(r.kind is GenerationKind.STRUCTURED and r.json_schema is SCHEMA for r in requests)
    second = requests[1].messages
    assert (second[1].role, second[1].content) == ("assistant", "not json at all")
    assert second[2].role == "user" and "not valid JSON" in second[2].content
    assert "'high' is not of type 'integer'" in requests[2].messages[4].content
    assert harness.executor.statistics().attempts == 3
    assert harness.granted() == 3


async def test_structured_calls_give_up_after_max_reasks_without_quoting_the_answer() -> None:
    secret = '{"score": "TOP-SECRET-VALUE"}'
    harness = Harness(ScriptedProviderClient(default=Reply(text=secret)))
    with pytest.raises(NonRetryableGenerationError) as caught:
        await harness.facade.generate_structured("writer", "Rate it", SCHEMA, max_reasks=1)
    message = str(caught.value)
    assert "'writer'" in message
    assert "after 1 re-ask(s)" in message
    assert "$.score" in message and "'type'" in message
    assert "TOP-SECRET" not in message
    assert "\n" not in message
    assert len(harness.client.requests) == 2


async def test_a_json_answer_that_is_not_an_object_is_re_asked() -> None:
    harness = Harness(ScriptedProviderClient([Reply(text="[1, 2]"), Reply(text='{"score": 1}')]))
    assert await harness.facade.generate_structured("writer", "p", SCHEMA) == {"score": 1}
    assert "not a JSON object" in harness.client.requests[1].messages[2].content


async def test_judge_calls_use_the_judge_kind_and_reject_unknown_kinds() -> None:
    harness = Harness(ScriptedProviderClient([Reply(text='{"score": 2}')]))
    value = await harness.facade.generate_structured(
        "writer", "Judge it", SCHEMA, generation_kind="judge", max_reasks=0
    )
    assert value == {"score": 2}
    assert harness.client.requests[0].kind is GenerationKind.JUDGE
    with pytest.raises(NonRetryableGenerationError, match="generation_kind='verdict'"):
        await harness.facade.generate_structured("writer", "p", SCHEMA, generation_kind="verdict")


def test_validators_are_compiled_once_per_schema() -> None:
    validators = _SchemaValidators()
    first = validators.get(SCHEMA, "writer")
    assert validators.get(SCHEMA, "writer") is first
    assert validators.get(dict(SCHEMA), "writer") is first  # same content, another object
    assert validators.get({"type": "object"}, "writer") is not first


async def test_an_invalid_schema_is_a_config_error() -> None:
    harness = Harness(ScriptedProviderClient([Reply()]))
    with pytest.raises(ConfigError, match="JSON schema is invalid"):
        await harness.facade.generate_structured("writer", "p", {"type": "no-such-type"})
    assert harness.client.requests == []


async def test_an_unknown_alias_is_a_config_error() -> None:
    harness = Harness(ScriptedProviderClient([Reply()]))
    with pytest.raises(ConfigError, match="unknown model alias 'poet'"):
        await harness.facade.generate_text("poet", "p")


async def test_embeddings_go_through_the_embedding_domain() -> None:
    def embed(request: ModelRequest) -> ModelResponse:
        return ModelResponse(embeddings=tuple((float(len(t)), 1.0) for t in request.inputs))

    harness = Harness(ScriptedProviderClient([embed]))
    vectors = await harness.facade.embed("embedder", ["a", "bcd"])
    assert vectors == [[1.0, 1.0], [3.0, 1.0]]
    (request,) = harness.client.requests
    assert (request.kind, request.inputs, request.model_id) == (
        GenerationKind.EMBEDDING,
        ("a", "bcd"),
        "e-1",
    )
    assert harness.granted(RequestDomain.EMBEDDING) == 1
    assert await harness.facade.embed("embedder", []) == []
    assert len(harness.client.requests) == 1


async def test_an_incomplete_embedding_answer_is_refused() -> None:
    harness = Harness(ScriptedProviderClient([Reply(text=None, embeddings=((1.0,),))]))
    with pytest.raises(NonRetryableGenerationError, match="1 embedding\\(s\\) for 2 input"):
        await harness.facade.embed("embedder", ["a", "b"])


async def test_sync_variants_work_from_a_worker_thread() -> None:
    harness = Harness(
        ScriptedProviderClient(
            [
                Reply(text="from a thread"),
                Reply(text='{"score": 3}'),
                Reply(text=None, embeddings=((0.5,),)),
            ]
        )
    )
    facade = harness.facade
    assert await asyncio.to_thread(facade.generate_text_sync, "writer", "hi") == "from a thread"
    assert await asyncio.to_thread(facade.generate_structured_sync, "writer", "rate", SCHEMA) == {
        "score": 3
    }
    assert await asyncio.to_thread(facade.embed_sync, "embedder", ["x"]) == [[0.5]]
    assert harness.executor.statistics().attempts == 3


async def test_sync_variants_refuse_to_deadlock_the_loop_thread() -> None:
    harness = Harness(ScriptedProviderClient([Reply()]))
    with pytest.raises(EngineError, match=r"event loop's own thread.*would deadlock"):
        harness.facade.generate_text_sync("writer", "hi")
    assert harness.client.requests == []


def test_sync_variants_need_a_loop_to_run_on() -> None:
    harness = Harness(ScriptedProviderClient([Reply()]), outside_loop=True)
    with pytest.raises(EngineError, match="no event loop"):
        harness.facade.embed_sync("embedder", ["x"])


async def test_a_missing_provider_client_is_an_engine_error_naming_the_provider() -> None:
    harness = Harness(ScriptedProviderClient([Reply()]))
    facade = ModelFacade(harness.resolver, {}, harness.executor)
    with pytest.raises(EngineError, match="no provider client for provider 'sim'"):
        await facade.generate_text("writer", "hi")
