"""Per-task trace sampling: the decision is deterministic and proportional to the rate, the kinds
split into detail and always-recorded, the rate travels in the events file's header, and the
correlation's ``traced`` flag survives the file (also files written before it existed)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from observability_samples import CORRELATION

from sluiceway.config.models import EventsConfig, RunConfig
from sluiceway.context import TaskCorrelation
from sluiceway.errors import StorageError
from sluiceway.observability import (
    ALWAYS_RECORDED_KINDS,
    DEFAULT_TRACE_SAMPLE_RATE,
    TRACED_KINDS,
    EventKind,
    JsonlEventSink,
    TraceSampler,
    read_events,
    read_events_header,
)
from sluiceway.observability.codes import RequestDomainCode
from sluiceway.observability.request_events import RequestRateLimited

TASK_IDS = [f"text/{group}/{row}" for group in range(40) for row in range(500)]


def test_the_decision_is_a_stable_hash_of_task_id_and_attempt() -> None:
    sampler = TraceSampler(1 / 16)
    decisions = [sampler.traces(task_id, 1) for task_id in TASK_IDS[:2000]]
    # Another sampler (another run, another process) decides the same.
    assert decisions == [TraceSampler(1 / 16).traces(task_id, 1) for task_id in TASK_IDS[:2000]]
    # The documented rule, so a resumed run or a later release keeps the same sample.
    for task_id in TASK_IDS[:2000]:
        digest = hashlib.blake2b(f"{task_id}#1".encode(), digest_size=8).digest()
        assert sampler.traces(task_id, 1) is (int.from_bytes(digest, "big") < 2**64 // 16)
    # Each attempt is decided on its own.
    assert [sampler.traces(t, 2) for t in TASK_IDS[:2000]] != decisions


@pytest.mark.parametrize("rate", [1 / 16, 0.25, 0.5])
def test_about_rate_of_the_task_attempts_are_traced(rate: float) -> None:
    sampler = TraceSampler(rate)
    share = sum(sampler.traces(task_id, 1) for task_id in TASK_IDS) / len(TASK_IDS)
    # 20,000 ids: a binomial share is within 1.5 points of the rate with room to spare.
    assert abs(share - rate) < 0.015
    # Also among ids that differ in a character or two (the cells of one row group), for
    # every attempt number: 400 each, so within 0.1 of the rate (about 4 standard deviations).
    for attempt in (1, 2, 3):
        for group in range(0, 40, 10):
            ids = TASK_IDS[group * 500 : group * 500 + 400]
            share = sum(sampler.traces(task_id, attempt) for task_id in ids) / len(ids)
            assert abs(share - rate) < 0.1, (attempt, group, share)


def test_rate_one_traces_every_attempt_and_rate_zero_none() -> None:
    assert all(TraceSampler(1.0).traces(task_id, 3) for task_id in TASK_IDS)
    assert not any(TraceSampler(0.0).traces(task_id, 1) for task_id in TASK_IDS)
    assert TraceSampler().rate == 1.0 and TraceSampler().traces_all


@given(
    task_id=st.text(max_size=40),
    attempt=st.integers(min_value=1, max_value=10_000),
    low=st.floats(min_value=0.0, max_value=1.0),
    high=st.floats(min_value=0.0, max_value=1.0),
)
def test_a_task_traced_at_a_rate_is_traced_at_every_higher_rate(
    task_id: str, attempt: int, low: float, high: float
) -> None:
    low, high = min(low, high), max(low, high)
    if TraceSampler(low).traces(task_id, attempt):
        assert TraceSampler(high).traces(task_id, attempt)


@pytest.mark.parametrize("rate", [-0.1, 1.5, math.nan, math.inf, True, "0.5"])
def test_a_bad_rate_is_refused_naming_the_setting(rate: object) -> None:
    with pytest.raises(ValueError, match="trace_sample_rate"):
        TraceSampler(rate)  # type: ignore[arg-type]


def test_the_kinds_split_into_detail_and_always_recorded() -> None:
    assert set(EventKind) == TRACED_KINDS | ALWAYS_RECORDED_KINDS
    assert not TRACED_KINDS & ALWAYS_RECORDED_KINDS
    assert {
        EventKind.SCHEDULER_JOB_STARTED,
        EventKind.SCHEDULER_JOB_COMPLETED,
        EventKind.SCHEDULER_HEALTH_SNAPSHOT,
        EventKind.ROW_GROUP_ADMITTED,
        EventKind.ROW_GROUP_ADMISSION_BLOCKED,
        EventKind.ROW_GROUP_ADMISSION_TARGET_CHANGED,
        EventKind.ROW_GROUP_CHECKPOINTED,
        EventKind.QUEUE_EMPTY,
        EventKind.ADMISSION_BLOCKED,
        EventKind.GROUP_CAPPED,
        EventKind.QUEUE_DRAINED,
        EventKind.CANCELLED,
        EventKind.RETRY_DEFERRED,
        EventKind.NON_RETRYABLE_DROPPED,
        EventKind.SALVAGE_REDISPATCHED,
        EventKind.WORKER_SPAWN_FAILED,
        EventKind.ADMISSION_DENIED,
        EventKind.STALE_SELECTION,
        EventKind.RELEASE_DIAGNOSTIC,
        EventKind.REQUEST_RESOURCE_REGISTERED,
        EventKind.REQUEST_EFFECTIVE_CAP_CHANGED,
        EventKind.REQUEST_QUEUE_FORMED,
        EventKind.REQUEST_QUEUE_DRAINED,
        EventKind.REQUEST_RATE_LIMITED,
        EventKind.REQUEST_LIMIT_DECREASED,
        EventKind.REQUEST_LIMIT_INCREASED,
        EventKind.REQUEST_SOFT_CEILING_RECOVERED,
        EventKind.REQUEST_FULLY_RECOVERED,
        EventKind.REQUEST_PACING_HELD,
        EventKind.REQUEST_WAIT_TIMEOUT,
        EventKind.REQUEST_WAIT_CANCELLED,
        EventKind.REQUEST_ACQUIRE_DENIED,
        EventKind.REQUEST_RELEASE_DIAGNOSTIC,
        EventKind.REQUEST_ADAPTIVE_TIMEOUT,
        EventKind.REQUEST_HEDGE_STARTED,
        EventKind.REQUEST_HEDGE_COMPLETED,
    } == ALWAYS_RECORDED_KINDS


def test_the_run_config_defaults_to_the_documented_rate_and_checks_its_range() -> None:
    assert EventsConfig().trace_sample_rate == DEFAULT_TRACE_SAMPLE_RATE == 1 / 16
    assert RunConfig(num_records=1).events.trace_sample_rate == DEFAULT_TRACE_SAMPLE_RATE
    assert RunConfig.model_validate(
        {"num_records": 1, "events": {"trace_sample_rate": 1.0}}
    ).events == EventsConfig(trace_sample_rate=1.0)
    for bad in (-0.5, 1.01, math.nan):
        with pytest.raises(ValueError, match="trace_sample_rate"):
            RunConfig.model_validate({"num_records": 1, "events": {"trace_sample_rate": bad}})


# -- the events file --------------------------------------------------------------------------


def _rate_limited(correlation: TaskCorrelation | None) -> RequestRateLimited:
    return RequestRateLimited(
        provider="sim",
        model="m",
        domain=RequestDomainCode.CHAT,
        attempt_id=3,
        retry_after_seconds=1.0,
        cooldown_seconds=1.0,
        captured_at=5.0,
        correlation=correlation,
    )


def test_the_header_carries_the_rate_and_the_traced_flag_round_trips(tmp_path: Path) -> None:
    untraced = TaskCorrelation(
        run_id="r",
        task_id="text/0/3",
        column="text",
        row_group=0,
        row_index=3,
        task_kind="cell",
        group_key="model:sim:m:text",
        group_weight=1,
        execution_id=4,
        traced=False,
    )
    path = tmp_path / "events.jsonl"
    events = [_rate_limited(CORRELATION), _rate_limited(untraced), _rate_limited(None)]
    with JsonlEventSink(path, trace_sample_rate=0.0625) as sink:
        for event in events:
            sink.handle(event)
    header = read_events_header(path)
    assert header["trace_sample_rate"] == 0.0625
    assert header["correlation_fields"][-1] == "traced"
    back = list(read_events(path))
    assert back == events
    assert [e.correlation.traced for e in back if e.correlation is not None] == [True, False]


def test_a_file_from_before_trace_sampling_reads_as_fully_traced(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    with JsonlEventSink(path) as sink:
        sink.handle(_rate_limited(CORRELATION))
    lines = path.read_text(encoding="utf-8").splitlines()
    header = json.loads(lines[0])
    assert header["trace_sample_rate"] == 1.0
    # The header and correlation lines as the earlier release wrote them.
    del header["trace_sample_rate"]
    header["correlation_fields"].remove("traced")
    rows = [json.loads(line) for line in lines[1:]]
    rows[0] = rows[0][:-1]  # the correlation line without its ``traced`` value
    old = tmp_path / "old.jsonl"
    old.write_text(
        "\n".join([json.dumps(header), *(json.dumps(row) for row in rows)]) + "\n",
        encoding="utf-8",
    )
    assert read_events_header(old)["trace_sample_rate"] == 1.0
    (event,) = read_events(old)
    assert event == _rate_limited(CORRELATION) and event.correlation is not None
    assert event.correlation.traced
    headerless = tmp_path / "v1.jsonl"
    headerless.write_text('{"kind": "queue_empty"}\n', encoding="utf-8")
    assert read_events_header(headerless) == {"trace_sample_rate": 1.0}


def test_a_header_with_a_bad_rate_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    with JsonlEventSink(path) as sink:
        sink.handle(_rate_limited(None))
    lines = path.read_text(encoding="utf-8").splitlines()
    header = json.loads(lines[0])
    header["trace_sample_rate"] = 3
    path.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n", encoding="utf-8")
    with pytest.raises(StorageError, match="trace_sample_rate"):
        read_events_header(path)
    with pytest.raises(ValueError, match="trace_sample_rate"):
        JsonlEventSink(tmp_path / "other.jsonl", trace_sample_rate=2.0)
