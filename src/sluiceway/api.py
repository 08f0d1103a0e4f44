"""The public Python API: run a config and get a pandas DataFrame plus run info.

    from sluiceway import generate
    result = generate("examples/quickstart.yaml", output="out/quickstart", overwrite=True)
    result.dataframe.head()

``generate`` blocks until the run ends; ``generate_async`` is the same coroutine for code that
already runs an event loop. ``start_generation`` runs in the background and returns a
``GenerationHandle`` whose ``cancel()`` stops the run in order (row groups already written are
kept). ``preview`` makes a few rows in memory and writes nothing.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sluiceway.config.loading import load_config
from sluiceway.config.models import DatasetConfig
from sluiceway.engine.cancellation import RunCancellation
from sluiceway.engine.progress import ProgressListener
from sluiceway.engine.run import RunInfo, RunOptions, run_dataset
from sluiceway.observability import EventBus
from sluiceway.storage.dataset import load_dataset

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True, slots=True, kw_only=True)
class GenerationResult:
    """The dataset of a finished run and what it took to make it."""

    dataframe: pd.DataFrame
    info: RunInfo


def _as_config(config: DatasetConfig | str | Path) -> DatasetConfig:
    return config if isinstance(config, DatasetConfig) else load_config(config)


async def generate_async(
    config: DatasetConfig | str | Path,
    *,
    output: str | Path | None = None,
    overwrite: bool | None = None,
    progress: ProgressListener | None = None,
    resume: bool = False,
    journal: bool = True,
    cancellation: RunCancellation | None = None,
    events: EventBus | None = None,
    events_file: str | Path | None = None,
    report: bool = False,
) -> GenerationResult:
    """Run ``config`` and write the dataset to ``output`` (default: the config's output path).

    Observability: ``events`` is a bus whose sinks receive every event of the run (the caller
    closes it); ``events_file`` writes them as JSON lines (``events.jsonl`` in ``output`` is what
    ``sluiceway run`` uses); with ``report`` as well, ``report.md`` and its plots are built in
    ``output`` after the run (a failure to build them is logged, never raised).

    After ``cancellation.cancel()`` the run stops in order and raises ``RunCancelledError``
    (``error.partial`` is the ``RunInfo`` of what was written).

    With ``resume`` a stopped run in ``output`` is continued (only missing row groups are made,
    journaled model results are reused); ``journal`` keeps completed model results in
    ``journal.sqlite`` so a crash loses no paid work. Raises ``ConfigError`` for an invalid
    config and ``StorageError`` when the output cannot be written or a resume is refused (the
    message says what changed); rows that fail permanently are dropped and listed in
    ``info.dropped_rows``.
    """
    cfg = _as_config(config)
    output_dir = Path(output if output is not None else cfg.output.path)
    outcome = await run_dataset(
        cfg,
        RunOptions(
            output_dir=output_dir,
            overwrite=(cfg.output.overwrite and not resume) if overwrite is None else overwrite,
            progress=progress,
            resume=resume,
            journal=journal,
            cancellation=cancellation,
            events=events,
            events_file=Path(events_file) if events_file is not None else None,
            report=report,
        ),
    )
    return GenerationResult(dataframe=load_dataset(output_dir), info=outcome.info)


class GenerationHandle:
    """A generation running in a background thread: ``cancel()`` it or wait for ``result()``."""

    def __init__(self, cancellation: RunCancellation, future: Future[GenerationResult]) -> None:
        self._cancellation = cancellation
        self._future = future

    def cancel(self) -> None:
        """Stop the run in order: admission stops, tasks are cancelled, leases are released and
        written row groups are kept. ``result()`` then raises ``RunCancelledError``."""
        self._cancellation.cancel()

    def done(self) -> bool:
        return self._future.done()

    def result(self, timeout: float | None = None) -> GenerationResult:
        """Wait for the run and return its result; re-raises the run's error."""
        return self._future.result(timeout)


def start_generation(
    config: DatasetConfig | str | Path,
    *,
    output: str | Path | None = None,
    overwrite: bool | None = None,
    progress: ProgressListener | None = None,
) -> GenerationHandle:
    """Start :func:`generate` in a background thread and return a handle on it."""
    cancellation = RunCancellation()
    future: Future[GenerationResult] = Future()

    def work() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            result = asyncio.run(
                generate_async(
                    config,
                    output=output,
                    overwrite=overwrite,
                    progress=progress,
                    cancellation=cancellation,
                )
            )
        except BaseException as error:
            future.set_exception(error)
        else:
            future.set_result(result)

    threading.Thread(target=work, name="sluiceway-generation", daemon=True).start()
    return GenerationHandle(cancellation, future)


def generate(
    config: DatasetConfig | str | Path,
    *,
    output: str | Path | None = None,
    overwrite: bool | None = None,
    progress: ProgressListener | None = None,
    resume: bool = False,
    journal: bool = True,
    events: EventBus | None = None,
    events_file: str | Path | None = None,
    report: bool = False,
) -> GenerationResult:
    """Blocking form of :func:`generate_async` (do not call it from a running event loop)."""
    return asyncio.run(
        generate_async(
            config,
            output=output,
            overwrite=overwrite,
            progress=progress,
            resume=resume,
            journal=journal,
            events=events,
            events_file=events_file,
            report=report,
        )
    )


async def preview_async(config: DatasetConfig | str | Path, num_records: int = 5) -> pd.DataFrame:
    """Make ``num_records`` rows in memory (nothing is written) and return them."""
    import pandas as pd

    cfg = _as_config(config)
    small = cfg.model_copy(update={"run": cfg.run.model_copy(update={"num_records": num_records})})
    outcome = await run_dataset(small, RunOptions(output_dir=None))
    assert outcome.rows is not None
    return pd.DataFrame(outcome.rows)


def preview(config: DatasetConfig | str | Path, num_records: int = 5) -> pd.DataFrame:
    """Blocking form of :func:`preview_async`."""
    return asyncio.run(preview_async(config, num_records))
