"""No prompt, completion, row value, exception message or secret reaches an event, a log line,
the JSONL file or the report: events have no field that could carry one."""

from __future__ import annotations

import asyncio
import logging
import typing
from dataclasses import dataclass, fields
from pathlib import Path

import pytest
from observability_samples import WRITER

from sluiceway.context import TaskCorrelation, current_task
from sluiceway.observability import EVENT_TYPES, EVENTS_FILE_NAME, EventBus, JsonlEventSink
from sluiceway.observability.codes import (
    JobStatus,
    RequestDomainCode,
    RequestOutcomeCode,
    TaskOutcomeCode,
)
from sluiceway.observability.report import build_report
from sluiceway.observability.request_events import (
    ModelRequestCompleted,
    ModelRequestStarted,
    RequestLeaseAcquired,
    RequestLeaseReleased,
    RequestWaitCompleted,
    RequestWaitStarted,
)
from sluiceway.observability.scheduler_events import (
    DependencyReady,
    NonRetryableDropped,
    ReadyEnqueued,
    RowGroupAdmitted,
    SchedulerJobCompleted,
    SchedulerJobStarted,
    Selected,
    TaskCompleted,
    TaskLeaseAcquired,
    TaskLeaseReleased,
    WorkerSpawned,
)

CANARY = "CANARY-7f3e9a1c"
# Free-text fields an event may have: names from the config, ids, and exception class names.
ALLOWED_TEXT_FIELDS = {"run_id", "task_id", "column", "group", "provider", "model", "error_type"}
# Mappings of counts keyed by task group key or scheduler resource name.
ALLOWED_COUNT_MAPPINGS = {"queued_by_group", "leases_by_resource"}


def test_events_have_no_field_that_could_carry_content() -> None:
    for cls in EVENT_TYPES.values():
        hints = typing.get_type_hints(cls)
        for field in fields(cls):
            if field.name in {"captured_at", "sequence", "correlation"}:
                continue
            hint = hints[field.name]
            if typing.get_origin(hint) is typing.get_origin(typing.Mapping[str, int]):
                assert field.name in ALLOWED_COUNT_MAPPINGS, (cls.__name__, field.name)
                assert typing.get_args(hint) == (str, int)
            elif str in (hint, *typing.get_args(hint)):
                assert field.name in ALLOWED_TEXT_FIELDS, (cls.__name__, field.name)


@dataclass
class FakeModelCall:
    """What a request emission point has at hand: secrets and content sit right next to ids."""

    api_key: str
    prompt: str
    row: dict[str, str]


class GenerationFailed(Exception):
    pass


async def _fake_run(bus: EventBus) -> None:
    """Emits the events of a tiny run the way the wiring does, with the canary everywhere in
    the data the engine handles."""
    bus.emit(SchedulerJobStarted(run_id="run-c", records_total=2, row_groups_total=1))
    bus.emit(RowGroupAdmitted(row_group=0, rows=2, row_groups_in_flight=1))
    for row_index in range(2):
        call = FakeModelCall(
            api_key=f"sk-{CANARY}",
            prompt=f"Write about {CANARY}",
            row={"topic": CANARY},
        )
        task = {
            "task_id": f"text/0/{row_index}",
            "column": "text",
            "row_group": 0,
            "group": WRITER,
        }
        bus.emit(DependencyReady(**task))
        bus.emit(ReadyEnqueued(group_depth=1, queued_total=1, **task))
        bus.emit(Selected(**task))
        bus.emit(TaskLeaseAcquired(lease_id=row_index, **task))
        bus.emit(WorkerSpawned(lease_id=row_index, execution_id=row_index, **task))
        token = current_task.set(
            TaskCorrelation(
                run_id="run-c",
                task_id=task["task_id"],
                column="text",
                row_group=0,
                row_index=row_index,
                task_kind="cell",
                group_key=WRITER,
                group_weight=4,
                execution_id=row_index,
            )
        )
        try:
            resource = {"provider": "sim", "model": "sim-writer", "domain": RequestDomainCode.CHAT}
            bus.emit(RequestWaitStarted(attempt_id=row_index, waiters_ahead=0, **resource))
            bus.emit(RequestWaitCompleted(attempt_id=row_index, waited_seconds=0.0, **resource))
            lease = {"attempt_id": row_index, "lease_id": row_index, **resource}
            bus.emit(RequestLeaseAcquired(in_flight=1, limit=4, cap=4, **lease))
            bus.emit(ModelRequestStarted(**lease))
            await asyncio.sleep(0)
            completion = f"{call.prompt} -> {call.row['topic']} ({call.api_key})"
            bus.emit(
                ModelRequestCompleted(
                    outcome=RequestOutcomeCode.SUCCESS,
                    latency_seconds=0.01,
                    output_tokens=len(completion.split()),
                    **lease,
                )
            )
            bus.emit(
                RequestLeaseReleased(
                    outcome=RequestOutcomeCode.SUCCESS, in_flight=0, limit=4, **lease
                )
            )
            if row_index == 1:
                raise GenerationFailed(f"could not parse {completion}")
            outcome = TaskOutcomeCode.SUCCEEDED
            error_type = None
        except GenerationFailed as error:
            outcome = TaskOutcomeCode.DROPPED
            error_type = type(error).__name__
            bus.emit(NonRetryableDropped(error_type=error_type, rows_dropped=1, **task))
        finally:
            current_task.reset(token)
        bus.emit(
            TaskCompleted(execution_id=row_index, outcome=outcome, error_type=error_type, **task)
        )
        bus.emit(TaskLeaseReleased(lease_id=row_index, **task))
    bus.emit(
        SchedulerJobCompleted(
            run_id="run-c", status=JobStatus.COMPLETED, records_written=1, records_dropped=1
        )
    )


def test_the_canary_reaches_no_artifact(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bus = EventBus([JsonlEventSink(tmp_path / EVENTS_FILE_NAME)])
    with caplog.at_level(logging.DEBUG):
        asyncio.run(_fake_run(bus))
        bus.close()
        build_report(tmp_path)
    assert "NonRetryableDropped" not in caplog.text  # nothing failed, so nothing was logged
    assert CANARY not in caplog.text
    written = [path for path in tmp_path.iterdir() if path.is_file()]
    assert {path.name for path in written} >= {EVENTS_FILE_NAME, "report.md"}
    for path in written:
        assert CANARY.encode() not in path.read_bytes(), path.name
    assert "GenerationFailed" in (tmp_path / EVENTS_FILE_NAME).read_text()
