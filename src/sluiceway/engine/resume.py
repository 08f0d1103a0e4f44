"""Resume and the cell journal on the engine side (SPEC §8).

``plan_resume`` checks, before anything is written, that a stopped run can be continued with this
config: same fingerprint (else a readable diff of what changed), sound files, the run's own
journal. ``CellReplay`` and ``JournaledGenerator`` journal the results of model-backed generators
as their tasks complete and, on resume, hand a journaled result back instead of calling the
generator again, so no paid request is repeated and the dataset equals an uninterrupted run.
A row dropped for a reason that is permanent for the row itself (the request was rejected as
invalid, or the generator failed for good after its requests) is journaled as a drop with its
error, and resume drops it again with the same reason without calling the model. Drops for
account or transient reasons (credentials, quota, a spent retry budget) are not journaled: a
resumed run, once the cause is fixed, tries those rows again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sluiceway.columns.base import ColumnGenerator, GenerationContext
from sluiceway.config.fingerprint import canonical_json, config_diff, config_fingerprint
from sluiceway.config.models import DatasetConfig
from sluiceway.errors import (
    BadRequestError,
    ContextLengthError,
    NonRetryableGenerationError,
    ProviderError,
    RequestAdmissionError,
    RetryableGenerationError,
    SluicewayError,
    StorageError,
)
from sluiceway.scheduling.failures import TaskErrorClass, classify_task_error
from sluiceway.scheduling.metadata import SchedulingKind, SchedulingMetadata
from sluiceway.scheduling.resolver import ResolvedTaskScheduling
from sluiceway.storage.journal import (
    GROUP_ROW_INDEX,
    CellJournal,
    CellKey,
    decode_payload,
    encode_payload,
)
from sluiceway.storage.manifest import MANIFEST_FILE_NAME, RunManifest, RunStatus
from sluiceway.storage.recovery import (
    RUN_CONFIG_FILE_NAME,
    RecoveredOutput,
    inspect_output,
    read_run_config,
)

_JOURNALED_KINDS = frozenset({SchedulingKind.MODEL, SchedulingKind.CUSTOM_MODEL})
# A journaled drop: {_DROP_TAG: {"error": class name, "message": text}} (plus "rows" for groups).
_DROP_TAG = "__sluiceway_dropped__"
# Drops are journaled only for these exact classes, so replay raises an equal error and the
# dropped-row reason (class name and message) is the same as in the run that made the request.
_REPLAYABLE_DROPS: dict[str, type[SluicewayError]] = {
    cls.__name__: cls for cls in (NonRetryableGenerationError, BadRequestError, ContextLengthError)
}
# A cause of one of these kinds means the drop may not happen again (credentials, quota, an
# outage that spent the retry budget, a local I/O problem): such drops are not journaled.
_PASSING_CAUSES = (ProviderError, RequestAdmissionError, RetryableGenerationError, OSError)


def is_permanent_drop(error: BaseException) -> bool:
    """Whether ``error`` drops its rows for a reason that a later attempt would meet again.

    An exception raised by user code (a custom column's function) is never one: the user may
    fix the function before resuming, and the row must then be generated again.
    """
    if _REPLAYABLE_DROPS.get(type(error).__name__) is not type(error):
        return False
    if classify_task_error(error) is not TaskErrorClass.NON_RETRYABLE:
        return False
    seen: set[int] = set()
    cause = error.__cause__
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if not isinstance(cause, SluicewayError):
            return False
        if isinstance(cause, _PASSING_CAUSES) and not isinstance(cause, BadRequestError):
            return False
        cause = cause.__cause__
    return True


def _drop_payload(error: BaseException) -> dict[str, str]:
    return {"error": type(error).__name__, "message": str(error)}


def _replayed_drop(data: object) -> SluicewayError | None:
    """The error a journaled drop stands for, or None when the entry is not a usable drop."""
    if not isinstance(data, dict):
        return None
    cls = _REPLAYABLE_DROPS.get(str(data.get("error")))
    message = data.get("message")
    if cls is None or not isinstance(message, str):
        return None
    return cls(message)


@dataclass(frozen=True, slots=True, kw_only=True)
class ResumePlan:
    """A checked, stopped run: what is on disk, and its journal (opened, not started) with the
    entries of every row group still to be generated."""

    recovered: RecoveredOutput
    journal: CellJournal | None
    entries: Mapping[int, Mapping[CellKey, str]]

    @property
    def manifest(self) -> RunManifest:
        return self.recovered.manifest

    @property
    def completed_row_groups(self) -> frozenset[int]:
        return self.recovered.completed_row_groups

    @property
    def is_complete(self) -> bool:
        """The run finished (status ``completed``) and every row group's file is still there:
        there is nothing to resume."""
        manifest = self.manifest
        total = -(-manifest.num_records // manifest.buffer_size)
        return (
            manifest.status is RunStatus.COMPLETED
            and not self.recovered.missing
            and self.completed_row_groups == frozenset(range(total))
        )


def plan_resume(
    directory: Path, *, config: DatasetConfig, fingerprint: str, use_journal: bool = True
) -> ResumePlan | None:
    """Checks that the run in ``directory`` can be continued with ``config`` (blocks).

    Returns ``None`` when the directory holds no dataset (a new run starts). Raises
    ``StorageError`` naming the path and the fix when the config changed (with a diff of what
    changed), a listed file is damaged, or the journal is damaged or belongs to another run.
    Writes nothing.
    """

    def accept(manifest: RunManifest) -> None:
        if manifest.config_fingerprint != fingerprint:
            raise StorageError(_refusal(directory, manifest, config))

    recovered = inspect_output(directory, accept=accept)
    if recovered is None:
        return None
    manifest = recovered.manifest
    journal: CellJournal | None = None
    entries: dict[int, dict[CellKey, str]] = {}
    if use_journal and recovered.has_journal:
        journal = CellJournal.open_existing(
            directory, run_id=manifest.run_id, config_fingerprint=fingerprint
        )
        total = -(-manifest.num_records // manifest.buffer_size)
        todo = set(range(total)) - recovered.completed_row_groups
        try:
            entries = journal.read_entries(todo)
        except BaseException:
            journal.close()
            raise
    return ResumePlan(recovered=recovered, journal=journal, entries=entries)


def _refusal(directory: Path, manifest: RunManifest, config: DatasetConfig) -> str:
    saved = read_run_config(directory)
    # The saved config explains the refusal only if it is the config the manifest was made from.
    saved_fingerprint = None if saved is None else _canonical_fingerprint(saved)
    lines = (
        config_diff(saved, config)
        if saved is not None and saved_fingerprint == manifest.config_fingerprint
        else []
    )
    head = (
        f"cannot resume the run in {directory}: its config differs from the one the run was "
        f"started with (fingerprint {manifest.config_fingerprint[:12]} in "
        f"{directory / MANIFEST_FILE_NAME}, {_short_fingerprint(config)} now)"
    )
    if lines:
        shown = "\n".join(f"  {line}" for line in lines[:20])
        more = f"\n  ... and {len(lines) - 20} more" if len(lines) > 20 else ""
        head += f". What changed:\n{shown}{more}\n"
    elif saved_fingerprint is None:
        head += (
            f" ({RUN_CONFIG_FILE_NAME}, the config the run was started with, is missing or "
            "unreadable, so what changed cannot be shown). "
        )
    else:
        head += (
            f" ({directory / RUN_CONFIG_FILE_NAME} has fingerprint {saved_fingerprint[:12]}, "
            f"so {MANIFEST_FILE_NAME} was written by a run of another config or copied from "
            "another dataset, and what changed cannot be shown). "
        )
    return head + "Resuming would mix rows of two configs. " + _how_to_continue(manifest, config)


def _how_to_continue(manifest: RunManifest, config: DatasetConfig) -> str:
    """The fix: the overrides to pass again (``-n`` / ``--seed`` change ``num_records`` and
    ``seed`` without a config edit) and, if more changed, restoring the config."""
    start_over = "pass --overwrite (without --resume) to start over with this config."
    overrides: dict[str, int] = {}
    flags: list[str] = []
    if manifest.num_records != config.run.num_records:
        overrides["num_records"] = manifest.num_records
        flags.append(f"-n {manifest.num_records}")
    if manifest.seed != config.run.seed:
        overrides["seed"] = manifest.seed
        flags.append(f"--seed {manifest.seed}")
    if not overrides:
        return f"Restore the original config to continue, or {start_over}"
    started = " and ".join(f"{name} {value}" for name, value in overrides.items())
    now = " and ".join(str(getattr(config.run, name)) for name in overrides)
    again = (
        f"pass `{' '.join(flags)}` again with --resume "
        f"({', '.join(f'{name}={value}' for name, value in overrides.items())} from Python)"
    )
    restored = config.model_copy(update={"run": config.run.model_copy(update=overrides)})
    if config_fingerprint(restored) == manifest.config_fingerprint:
        return (
            f"The run was started with {started} (this config has {now}): {again} to "
            f"continue it, or {start_over}"
        )
    return (
        f"Restore the original config and {again}: the run was started with {started} (this "
        f"config has {now}). Or {start_over}"
    )


def _short_fingerprint(config: DatasetConfig) -> str:
    return config_fingerprint(config)[:12]


def _canonical_fingerprint(canonical: Mapping[str, Any]) -> str:
    """The fingerprint of a saved canonical config (``run_config.json``)."""
    return hashlib.sha256(canonical_json(canonical).encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class CellReplayStatistics:
    """``replayed``: results handed back from the journal (cells; a group result counts its
    rows); ``recorded``: results journaled; ``not_journaled``: results whose values could not be
    encoded (the Parquet writer reports them)."""

    replayed: int
    recorded: int
    not_journaled: int


class CellReplay:
    """The engine's view of the journal: record completed results, replay journaled ones.

    Runs on the event loop and never blocks: recording queues work for the journal's writer
    thread. A journaled entry is handed back at most once and forgotten with its row group.
    """

    def __init__(
        self, journal: CellJournal, entries: Mapping[int, Mapping[CellKey, str]] | None = None
    ) -> None:
        self._journal = journal
        # Mutable state: payloads still to replay, by row group; counters.
        self._entries: dict[int, dict[CellKey, str]] = {
            row_group: dict(cells) for row_group, cells in (entries or {}).items()
        }
        self._replayed = 0
        self._recorded = 0
        self._not_journaled = 0

    @property
    def journal(self) -> CellJournal:
        return self._journal

    def take_cell(self, row_group: int, column: str, row_index: int) -> Mapping[str, Any] | None:
        """The journaled values of one cell, or None; raises the journaled error of a drop."""
        cells = self._entries.get(row_group)
        payload = None if cells is None else cells.pop((column, row_index), None)
        if payload is None:
            return None
        value = decode_payload(payload)
        if not isinstance(value, dict):
            return None
        if _DROP_TAG in value:
            error = _replayed_drop(value[_DROP_TAG])
            if error is None:
                return None
            self._replayed += 1
            raise error
        self._replayed += 1
        return value

    def take_group(
        self, row_group: int, column: str, row_indices: Sequence[int]
    ) -> list[Mapping[str, Any]] | None:
        cells = self._entries.get(row_group)
        payload = None if cells is None else cells.pop((column, GROUP_ROW_INDEX), None)
        if payload is None:
            return None
        value = decode_payload(payload)
        # A batch result is reused only for exactly the rows it was made for.
        if not isinstance(value, dict) or value.get("rows") != list(row_indices):
            return None
        if _DROP_TAG in value:
            error = _replayed_drop(value[_DROP_TAG])
            if error is None:
                return None
            self._replayed += len(row_indices)
            raise error
        results = value.get("values")
        if not isinstance(results, list) or len(results) != len(row_indices):
            return None
        self._replayed += len(results)
        return results

    def record_cell(
        self, row_group: int, column: str, row_index: int, values: Mapping[str, Any]
    ) -> None:
        self._record(row_group, column, row_index, dict(values))

    def record_group(
        self,
        row_group: int,
        column: str,
        row_indices: Sequence[int],
        results: Sequence[Mapping[str, Any]],
    ) -> None:
        self._record(
            row_group,
            column,
            GROUP_ROW_INDEX,
            {"rows": list(row_indices), "values": [dict(values) for values in results]},
        )

    def record_drop(
        self,
        row_group: int,
        column: str,
        row_indices: Sequence[int] | int,
        error: BaseException,
    ) -> None:
        """Journals a permanent drop (``is_permanent_drop``) of one cell (an ``int`` row index)
        or of a group task's rows; other errors are not journaled."""
        if not is_permanent_drop(error):
            return
        if isinstance(row_indices, int):
            self._record(row_group, column, row_indices, {_DROP_TAG: _drop_payload(error)})
            return
        value = {"rows": list(row_indices), _DROP_TAG: _drop_payload(error)}
        self._record(row_group, column, GROUP_ROW_INDEX, value)

    def _record(self, row_group: int, column: str, row_index: int, value: object) -> None:
        try:
            payload = encode_payload(value)
        except (TypeError, ValueError):
            self._not_journaled += 1
            return
        self._journal.record(row_group, column, row_index, payload)
        self._recorded += 1

    def row_group_checkpointed(self, row_group: int) -> None:
        """Its file and the manifest are on disk: its journal entries are no longer needed."""
        self._entries.pop(row_group, None)
        self._journal.forget_row_group(row_group)

    def statistics(self) -> CellReplayStatistics:
        return CellReplayStatistics(
            replayed=self._replayed, recorded=self._recorded, not_journaled=self._not_journaled
        )


class JournaledGenerator(ColumnGenerator):
    """Wraps a model-backed generator: same name, outputs, dependencies, strategy and metadata.

    Before calling ``inner`` it asks the replay for a journaled result of the same column and
    rows; after ``inner`` returns it records the result. Errors from ``inner`` pass through
    unchanged; a permanent drop (``is_permanent_drop``) is recorded, and replaying it raises the
    same error again, so the rows are dropped with the same reason and no request is sent.
    """

    def __init__(self, inner: ColumnGenerator, replay: CellReplay) -> None:
        self.inner = inner
        self.replay = replay
        self.name = inner.name
        self.output_columns = inner.output_columns
        self.dependencies = inner.dependencies
        self.strategy = inner.strategy
        self.model_aliases = inner.model_aliases

    def get_scheduling_metadata(self) -> SchedulingMetadata | None:
        return self.inner.get_scheduling_metadata()

    async def generate_cell(
        self, row: Mapping[str, Any], ctx: GenerationContext
    ) -> Mapping[str, Any]:
        row_index = ctx.row_indices[0]
        stored = self.replay.take_cell(ctx.row_group, self.name, row_index)
        if stored is not None:
            return stored
        try:
            values = await self.inner.generate_cell(row, ctx)
        except SluicewayError as error:
            self.replay.record_drop(ctx.row_group, self.name, row_index, error)
            raise
        self.replay.record_cell(ctx.row_group, self.name, row_index, values)
        return values

    async def generate_batch(
        self, rows: Sequence[Mapping[str, Any]], ctx: GenerationContext
    ) -> Sequence[Mapping[str, Any]]:
        stored = self.replay.take_group(ctx.row_group, self.name, ctx.row_indices)
        if stored is not None:
            return stored
        try:
            results = await self.inner.generate_batch(rows, ctx)
        except SluicewayError as error:
            self.replay.record_drop(ctx.row_group, self.name, ctx.row_indices, error)
            raise
        self.replay.record_group(ctx.row_group, self.name, ctx.row_indices, results)
        return results

    async def generate_from_scratch(self, ctx: GenerationContext) -> Sequence[Mapping[str, Any]]:
        stored = self.replay.take_group(ctx.row_group, self.name, ctx.row_indices)
        if stored is not None:
            return stored
        try:
            results = await self.inner.generate_from_scratch(ctx)
        except SluicewayError as error:
            self.replay.record_drop(ctx.row_group, self.name, ctx.row_indices, error)
            raise
        self.replay.record_group(ctx.row_group, self.name, ctx.row_indices, results)
        return results


def journal_model_generators(
    generators: Sequence[ColumnGenerator],
    scheduling: Sequence[ResolvedTaskScheduling],
    replay: CellReplay,
) -> list[ColumnGenerator]:
    """``generators`` with every model-backed one (``model`` or ``custom_model`` scheduling)
    wrapped in a ``JournaledGenerator``; local generators are cheap and deterministic and are
    simply run again."""
    return [
        JournaledGenerator(generator, replay)
        if resolved.metadata.kind in _JOURNALED_KINDS
        else generator
        for generator, resolved in zip(generators, scheduling, strict=True)
    ]


def resumed_config(config: DatasetConfig, plan: ResumePlan) -> DatasetConfig:
    """``config`` with the stopped run's ``buffer_size`` (row groups must line up with the files
    on disk; the rows themselves do not depend on it)."""
    buffer_size = plan.manifest.buffer_size
    if config.run.buffer_size == buffer_size:
        return config
    return config.model_copy(
        update={"run": config.run.model_copy(update={"buffer_size": buffer_size})}
    )
