"""The simulated endpoint's behaviour model: keys, content, latency, faults and admission."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from typing import Any

import jsonschema
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from sluiceway.errors import BadRequestError, ConfigError, EngineError
from sluiceway.providers.base import ChatMessage, GenerationKind, ModelRequest
from sluiceway.providers.behaviour import (
    RPM_WINDOW_SECONDS,
    AttemptLedger,
    AttemptOutcome,
    BehaviourModel,
    Refusal,
    RefusalReason,
    SimulationSettings,
)
from sluiceway.providers.json_instances import WORDS

RUBRIC_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        criterion: {
            "type": "object",
            "properties": {
                "score": {"type": "integer", "minimum": 1, "maximum": 4},
                "reasoning": {"type": "string"},
            },
            "required": ["score", "reasoning"],
            "additionalProperties": False,
        }
        for criterion in ("correctness", "style")
    },
    "required": ["correctness", "style"],
    "additionalProperties": False,
}


def _chat(
    prompt: str = "Describe the lighthouse keeper and his telescope.",
    *,
    kind: GenerationKind = GenerationKind.TEXT,
    model_id: str = "sim-model",
    schema: dict[str, Any] | None = None,
    parameters: dict[str, Any] | None = None,
) -> ModelRequest:
    return ModelRequest(
        model_id=model_id,
        kind=kind,
        messages=(
            ChatMessage(role="system", content="You are helpful."),
            ChatMessage(role="user", content=prompt),
        ),
        json_schema=schema,
        parameters=parameters or {},
    )


def _embedding(*texts: str, model_id: str = "sim-embed") -> ModelRequest:
    return ModelRequest(model_id=model_id, kind=GenerationKind.EMBEDDING, inputs=texts)


def _model(seed: int = 1, **overrides: Any) -> BehaviourModel:
    return BehaviourModel(SimulationSettings(**overrides), seed)


# --------------------------------------------------------------------------------------------
# Request keys
# --------------------------------------------------------------------------------------------


def test_request_key_is_a_stable_content_hash() -> None:
    # A fixed value: the key must not depend on Python's per-process hash randomization,
    # and changing it breaks resume tests that count requests by key.
    key = _model(seed=42).request_key(_chat("hello"))
    assert len(key) == 16
    assert key == _model(seed=42).request_key(_chat("hello"))
    assert key.hex() == _model(seed=42).request_key(_chat("hello")).hex()
    assert key.hex() == "dfd94422e02feb7765e31481b3a7e05e"


def test_request_key_covers_content_and_seed_but_not_the_timeout() -> None:
    model = _model()
    base = _chat(schema=None, parameters={"temperature": 0.5})
    variants = [
        dataclasses.replace(base, model_id="other"),
        dataclasses.replace(base, kind=GenerationKind.STRUCTURED),
        dataclasses.replace(base, messages=base.messages[1:]),
        dataclasses.replace(base, inputs=("x",)),
        dataclasses.replace(base, json_schema={"type": "string"}),
        dataclasses.replace(base, parameters={"temperature": 0.6}),
    ]
    keys = {model.request_key(request) for request in variants}
    assert len(keys) == len(variants)
    assert model.request_key(base) not in keys
    assert _model(seed=2).request_key(base) != model.request_key(base)
    assert model.request_key(dataclasses.replace(base, timeout_seconds=3.0)) == model.request_key(
        base
    )


def test_request_key_is_unambiguous_at_message_boundaries() -> None:
    model = _model()
    split_one = ModelRequest(
        model_id="m",
        kind=GenerationKind.TEXT,
        messages=(ChatMessage(role="user", content="ab"), ChatMessage(role="user", content="c")),
    )
    split_two = ModelRequest(
        model_id="m",
        kind=GenerationKind.TEXT,
        messages=(ChatMessage(role="user", content="a"), ChatMessage(role="user", content="bc")),
    )
    assert model.request_key(split_one) != model.request_key(split_two)


def test_request_key_ignores_mapping_key_order() -> None:
    model = _model()
    one = _chat(schema={"type": "object", "title": "T"}, parameters={"a": 1, "b": [1, 2]})
    two = _chat(schema={"title": "T", "type": "object"}, parameters={"b": [1, 2], "a": 1})
    assert model.request_key(one) == model.request_key(two)


def test_request_key_rejects_parameters_that_are_not_json() -> None:
    with pytest.raises(BadRequestError, match="parameters are not JSON"):
        _model().request_key(_chat(parameters={"stop": object()}))


# --------------------------------------------------------------------------------------------
# Content
# --------------------------------------------------------------------------------------------


def test_text_answers_are_deterministic_per_seed() -> None:
    request = _chat()
    first = _model(seed=5).respond(request)
    assert first == _model(seed=5).respond(request)
    assert first.text != _model(seed=6).respond(request).text
    assert first.text != _model(seed=5).respond(_chat("A different prompt entirely")).text


def test_text_answers_are_sentences_naming_prompt_words() -> None:
    model = _model()
    mentioned = 0
    for index in range(50):
        prompt = f"Write about the lighthouse keeper number {index} and his telescope."
        response = model.respond(_chat(prompt))
        assert response.text is not None
        assert response.text.endswith(".")
        assert response.text[0].isupper()
        assert response.reasoning is not None
        assert response.reasoning
        assert response.usage.prompt_tokens > 0
        assert response.usage.completion_tokens >= 10 * 4 // 3
        mentioned += any(
            word in response.text for word in ("lighthouse", "keeper", "telescope", "write")
        )
        vocabulary = set(WORDS) | {"regarding", "and", "lighthouse", "keeper", "telescope"}
        vocabulary |= {"write", "about", "number", "with"}
        words = response.text.replace(",", "").replace(".", "").lower().split()
        assert set(words) <= vocabulary
    assert mentioned >= 45


@pytest.mark.parametrize("kind", [GenerationKind.STRUCTURED, GenerationKind.JUDGE])
def test_structured_and_judge_answers_validate_against_the_schema(kind: GenerationKind) -> None:
    model = _model()
    scores = set()
    for index in range(40):
        response = model.respond(_chat(f"Grade answer {index}", kind=kind, schema=RUBRIC_SCHEMA))
        assert response.text is not None
        value = json.loads(response.text)
        jsonschema.validate(value, RUBRIC_SCHEMA)
        scores.add(value["correctness"]["score"])
    assert scores == {1, 2, 3, 4}


def test_schemaless_structured_and_judge_answers_are_json_objects() -> None:
    model = _model()
    judge = json.loads(model.respond(_chat(kind=GenerationKind.JUDGE)).text or "")
    assert 1 <= judge["score"] <= 5
    assert isinstance(judge["reasoning"], str)
    structured = json.loads(model.respond(_chat(kind=GenerationKind.STRUCTURED)).text or "")
    assert isinstance(structured["answer"], str)


def test_invalid_json_answers_do_not_parse() -> None:
    model = _model()
    request = _chat(kind=GenerationKind.STRUCTURED, schema=RUBRIC_SCHEMA)
    response = model.respond(request, invalid_json=True)
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.text or "")


def test_invalid_json_rate_is_deterministic_per_attempt() -> None:
    model = _model(invalid_json_rate=0.5)
    key = model.request_key(_chat(kind=GenerationKind.STRUCTURED))
    draws = [
        model.should_answer_invalid_json(GenerationKind.STRUCTURED, key, n) for n in range(1, 41)
    ]
    assert draws == [
        _model(invalid_json_rate=0.5).should_answer_invalid_json(GenerationKind.STRUCTURED, key, n)
        for n in range(1, 41)
    ]
    assert 8 <= sum(draws) <= 32
    assert not model.should_answer_invalid_json(GenerationKind.TEXT, key, 1)
    always = _model(invalid_json_rate=1.0)
    assert all(always.should_answer_invalid_json(GenerationKind.JUDGE, key, n) for n in (1, 2, 3))


def test_embeddings_are_unit_vectors_of_the_configured_dimension() -> None:
    model = _model(embedding_dimensions=24)
    response = model.respond(_embedding("alpha", "beta", "alpha"))
    assert len(response.embeddings) == 3
    for vector in response.embeddings:
        assert len(vector) == 24
        assert math.isclose(math.fsum(v * v for v in vector), 1.0, rel_tol=1e-9)
    alpha, beta, alpha_again = response.embeddings
    assert alpha == alpha_again
    assert alpha != beta
    assert response.usage.prompt_tokens > 0
    # Per input: the same text embeds the same in any batch; another seed embeds differently.
    assert model.respond(_embedding("beta")).embeddings[0] == beta
    assert _model(seed=9, embedding_dimensions=24).respond(_embedding("beta")).embeddings[0] != beta


def test_embedding_without_inputs_is_a_bad_request() -> None:
    with pytest.raises(BadRequestError, match="no inputs"):
        _model().respond(_embedding())


# --------------------------------------------------------------------------------------------
# Latency and faults
# --------------------------------------------------------------------------------------------


def test_latency_is_fixed_without_a_tail() -> None:
    model = _model(latency_seconds=0.25)
    key = model.request_key(_chat())
    assert model.latency_seconds(key) == 0.25
    assert model.latency_seconds(key, 7) == 0.25


def test_latency_tail_is_deterministic_with_the_configured_mean() -> None:
    model = _model(latency_seconds=0.1, latency_tail_seconds=0.5)
    keys = [model.request_key(_chat(f"prompt {index}")) for index in range(4000)]
    latencies = [model.latency_seconds(key) for key in keys]
    assert latencies == [
        _model(latency_seconds=0.1, latency_tail_seconds=0.5).latency_seconds(key) for key in keys
    ]
    assert min(latencies) > 0.1
    assert statistics.fmean(latencies) == pytest.approx(0.6, rel=0.1)
    assert statistics.median(latencies) < statistics.fmean(latencies)  # a right-skewed tail
    # A retry (next attempt) draws a fresh latency.
    assert model.latency_seconds(keys[0], 2) != model.latency_seconds(keys[0], 1)


def test_failure_rate_extremes_and_share() -> None:
    key = _model().request_key(_chat())
    assert not any(_model(failure_rate=0.0).should_fail(key, n) for n in range(1, 50))
    assert all(_model(failure_rate=1.0).should_fail(key, n) for n in range(1, 50))
    model = _model(failure_rate=0.2)
    keys = [model.request_key(_chat(f"p{index}")) for index in range(3000)]
    share = sum(model.should_fail(key, 1) for key in keys) / len(keys)
    assert share == pytest.approx(0.2, abs=0.03)
    assert [model.should_fail(key, 1) for key in keys[:100]] == [
        _model(failure_rate=0.2).should_fail(key, 1) for key in keys[:100]
    ]


# --------------------------------------------------------------------------------------------
# Admission
# --------------------------------------------------------------------------------------------


def test_capacity_refuses_beyond_the_concurrent_limit() -> None:
    model = _model(capacity=2, retry_after_seconds=2.5)
    assert model.admit(0.0) is None
    assert model.admit(0.1) is None
    assert model.admit(0.2) == Refusal(reason=RefusalReason.CAPACITY, retry_after_seconds=2.5)
    model.finish(0.3, AttemptOutcome.SUCCESS)
    assert model.admit(0.4) is None
    stats = model.statistics()
    assert (stats.requests, stats.rate_limited, stats.in_flight, stats.max_in_flight) == (
        4,
        1,
        2,
        2,
    )


def test_rpm_refuses_within_the_rolling_window_and_names_the_wait() -> None:
    model = _model(rpm=3)
    for now in (0.0, 1.0, 2.0):
        assert model.admit(now) is None
        model.finish(now, AttemptOutcome.SUCCESS)
    refusal = model.admit(10.0)
    assert refusal == Refusal(reason=RefusalReason.RPM, retry_after_seconds=50.0)
    assert model.admit(RPM_WINDOW_SECONDS - 0.5) is not None
    # At exactly 60 s the first admit has left the window; refusals never consumed a slot.
    assert model.admit(RPM_WINDOW_SECONDS) is None
    assert model.admit(RPM_WINDOW_SECONDS + 0.5) is not None
    assert model.statistics().rate_limited == 3


def test_tpm_refuses_tokens_beyond_the_rolling_window_and_names_the_wait() -> None:
    model = _model(tpm=100)
    assert model.admit(0.0, tokens=60) is None
    assert model.admit(5.0, tokens=30) is None
    # 90 spent: 20 more would pass 100 until the first 60 leave the window at 60 s.
    assert model.admit(10.0, tokens=20) == Refusal(
        reason=RefusalReason.TPM, retry_after_seconds=50.0
    )
    assert model.admit(10.0, tokens=10) is None  # exactly 100 fits
    assert model.admit(RPM_WINDOW_SECONDS, tokens=20) is None
    assert model.statistics().rate_limited == 1


def test_a_request_above_the_whole_tpm_is_admitted_into_an_empty_window_only() -> None:
    model = _model(tpm=100)
    assert model.admit(0.0, tokens=500) is None
    refusal = model.admit(1.0, tokens=500)
    assert refusal is not None and refusal.retry_after_seconds == 59.0


def test_a_tpm_refusal_does_not_take_an_rpm_slot() -> None:
    model = _model(rpm=2, tpm=10)
    assert model.admit(0.0, tokens=10) is None
    assert model.admit(1.0, tokens=5) is not None  # tpm
    assert model.admit(RPM_WINDOW_SECONDS, tokens=5) is None
    assert model.admit(RPM_WINDOW_SECONDS, tokens=5) is None  # the refused one left no trace


def test_the_token_cost_is_the_usage_the_answer_reports() -> None:
    model = _model(tpm=1000)
    request = _chat()
    assert model.token_cost(request) == model.respond(request).usage.total_tokens > 0
    assert model.token_cost(_embedding()) == 0  # rejected as invalid: costs nothing


def test_finish_without_admit_and_a_backwards_clock_are_engine_errors() -> None:
    model = _model()
    with pytest.raises(EngineError, match="without an admitted attempt"):
        model.finish(0.0, AttemptOutcome.SUCCESS)
    assert model.admit(5.0) is None
    with pytest.raises(EngineError, match="clock went backwards"):
        model.finish(4.0, AttemptOutcome.SUCCESS)


def test_statistics_count_outcomes_and_integrate_in_flight_time() -> None:
    model = _model()
    assert model.admit(0.0) is None
    assert model.admit(1.0) is None
    model.finish(3.0, AttemptOutcome.INVALID_JSON)
    assert model.admit(3.0) is None
    model.finish(4.0, AttemptOutcome.FAILURE)
    model.finish(4.0, AttemptOutcome.TIMEOUT)
    stats = model.statistics()
    assert stats.in_flight_seconds == pytest.approx(1 * 1 + 2 * 2 + 2 * 1)
    assert (stats.successes, stats.invalid_json, stats.failures, stats.timeouts) == (0, 1, 1, 1)
    assert stats.in_flight == 0
    assert stats.max_in_flight == 2


def test_invalid_settings_are_config_errors_naming_every_field() -> None:
    with pytest.raises(ConfigError) as caught:
        SimulationSettings(capacity=0, failure_rate=1.5, latency_seconds=-1.0)
    paths = {issue.path for issue in caught.value.issues}
    assert paths == {"simulation.capacity", "simulation.failure_rate", "simulation.latency_seconds"}


def test_attempt_ledger_counts_forgets_and_stays_bounded() -> None:
    ledger = AttemptLedger(max_keys=3)
    assert [ledger.begin(b"a"), ledger.begin(b"a"), ledger.begin(b"b")] == [1, 2, 1]
    ledger.forget(b"a")
    assert ledger.begin(b"a") == 1
    for key in (b"c", b"d", b"e"):
        ledger.begin(key)
    assert len(ledger) == 3


class AdmissionMachine(RuleBasedStateMachine):
    """Capacity and the RPM window hold under any interleaving of admits, finishes and time."""

    CAPACITY = 3
    RPM = 5

    def __init__(self) -> None:
        super().__init__()
        self.model = _model(capacity=self.CAPACITY, rpm=self.RPM)
        self.now = 0.0
        self.live = 0
        self.admitted_at: list[float] = []

    @rule(seconds=st.floats(0.0, 40.0))
    def advance(self, seconds: float) -> None:
        self.now += seconds

    @rule()
    def admit(self) -> None:
        refusal = self.model.admit(self.now)
        recent = [t for t in self.admitted_at if t > self.now - RPM_WINDOW_SECONDS]
        if refusal is None:
            self.live += 1
            self.admitted_at.append(self.now)
            assert len(recent) < self.RPM
        else:
            assert refusal.retry_after_seconds > 0
            assert self.live == self.CAPACITY or len(recent) == self.RPM

    @precondition(lambda self: self.live > 0)
    @rule(outcome=st.sampled_from(AttemptOutcome))
    def finish(self, outcome: AttemptOutcome) -> None:
        self.model.finish(self.now, outcome)
        self.live -= 1

    @invariant()
    def in_flight_matches_live_attempts(self) -> None:
        stats = self.model.statistics()
        assert stats.in_flight == self.live <= self.CAPACITY
        ended = (
            stats.successes
            + stats.invalid_json
            + stats.failures
            + stats.timeouts
            + stats.cancelled
            + stats.rejected
        )
        assert stats.requests == stats.rate_limited + stats.in_flight + ended


TestAdmissionMachine = AdmissionMachine.TestCase
TestAdmissionMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
