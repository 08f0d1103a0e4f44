"""The public Python API: run a config and get a pandas DataFrame plus run info.

    from sluiceway import generate
    result = generate("examples/quickstart.yaml", output="out/quickstart", overwrite=True)
    result.dataframe.head()

``generate`` blocks until the run ends; ``generate_async`` is the same coroutine for code that
already runs an event loop. Called from inside a running event loop (a notebook cell), the
blocking ``generate`` and ``preview`` run on a helper thread with a loop of their own.
``start_generation`` runs in the background and returns a ``GenerationHandle`` whose
``cancel()`` stops the run in order (row groups already written are kept). ``preview`` makes a
few rows in memory and writes nothing.

The outputs are those of ``sluiceway run``: the dataset, its manifest and capacity plan, and by
default ``events.jsonl`` and ``report.md`` with its plots (``events_file=False`` and
``report=False`` turn them off, like ``--no-events`` and ``--no-report``). ``num_records`` and
``seed`` override the config's ``run.num_records`` and ``run.seed`` like ``-n`` and ``--seed``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sluiceway.config.loading import load_config
from sluiceway.config.models import DatasetConfig
from sluiceway.engine.cancellation import RunCancellation
from sluiceway.engine.progress import ProgressListener
from sluiceway.engine.run import RunInfo, RunOptions, run_dataset
from sluiceway.errors import ConfigError, ConfigIssue
from sluiceway.observability import EVENTS_FILE_NAME, EventBus
from sluiceway.storage.dataset import load_dataset

if TYPE_CHECKING:
    import pandas as pd

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True, kw_only=True)
class GenerationResult:
    """The dataset of a finished run and what it took to make it."""

    dataframe: pd.DataFrame
    info: RunInfo


def _as_config(config: DatasetConfig | str | Path) -> DatasetConfig:
    return config if isinstance(config, DatasetConfig) else load_config(config)


def with_run_overrides(
    config: DatasetConfig, *, num_records: int | None = None, seed: int | None = None
) -> DatasetConfig:
    """``config`` with ``run.num_records`` and ``run.seed`` replaced where given (the CLI's
    ``-n`` and ``--seed``). Raises ``ConfigError`` for a ``num_records`` below 1."""
    updates: dict[str, int] = {}
    if num_records is not None:
        if isinstance(num_records, bool) or not isinstance(num_records, int) or num_records < 1:
            raise ConfigError(
                [
                    ConfigIssue(
                        path="num_records",
                        message=f"num_records is {num_records!r}; it must be an integer >= 1",
                        hint="pass num_records=1 or more, or leave it out to use run.num_records",
                    )
                ]
            )
        updates["num_records"] = num_records
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(
                [
                    ConfigIssue(
                        path="seed",
                        message=f"seed is {seed!r}; it must be an integer",
                        hint="pass an int, or leave it out to use run.seed",
                    )
                ]
            )
        updates["seed"] = seed
    if not updates:
        return config
    return config.model_copy(update={"run": config.run.model_copy(update=updates)})


def _events_path(events_file: str | Path | bool | None, output_dir: Path) -> Path | None:
    if events_file is True:
        return output_dir / EVENTS_FILE_NAME
    if events_file is False or events_file is None:
        return None
    return Path(events_file)


def _run_blocking(
    work: Callable[[], Coroutine[Any, Any, _T]], cancellation: RunCancellation | None = None
) -> _T:
    """Runs ``work()`` to the end and returns its result, from synchronous code.

    With no event loop running on this thread it uses ``asyncio.run``. Inside a running loop (a
    notebook cell, an async framework's handler) that cannot be nested, so ``work`` runs on a
    helper thread with a loop of its own while this thread waits (the calling loop is blocked
    for that time, as with any blocking call). A ``KeyboardInterrupt`` while waiting cancels the
    run in order through ``cancellation``, waits for it to stop, and is raised again.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(work())
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sluiceway-sync") as pool:
        future = pool.submit(lambda: asyncio.run(work()))
        try:
            return future.result()
        except KeyboardInterrupt:
            if cancellation is not None:
                cancellation.cancel()
            raise


async def generate_async(
    config: DatasetConfig | str | Path,
    *,
    output: str | Path | None = None,
    overwrite: bool | None = None,
    num_records: int | None = None,
    seed: int | None = None,
    progress: ProgressListener | None = None,
    resume: bool = False,
    journal: bool = True,
    cancellation: RunCancellation | None = None,
    events: EventBus | None = None,
    events_file: str | Path | bool = True,
    report: bool = True,
) -> GenerationResult:
    """Run ``config`` and write the dataset to ``output`` (default: the config's output path).

    ``num_records`` and ``seed`` override ``run.num_records`` and ``run.seed`` (``-n`` and
    ``--seed`` of ``sluiceway run``); resuming a run started with them needs the same values.

    Observability, as ``sluiceway run`` does it: ``events_file`` is where the run's events go as
    JSON lines (``True``, the default: ``events.jsonl`` in ``output``; a path: there; ``False``:
    no events file), and with ``report`` (default ``True``) ``report.md`` and its plots are
    built in ``output`` from that file after the run (a failure to build them is logged, never
    raised; no events file means no report). ``events`` is a bus whose sinks also receive every
    event of the run (the caller closes it).

    After ``cancellation.cancel()`` the run stops in order and raises ``RunCancelledError``
    (``error.partial`` is the ``RunInfo`` of what was written).

    With ``resume`` a stopped run in ``output`` is continued (only missing row groups are made,
    journaled model results are reused; a run that already completed is left as it is and
    ``info.already_complete`` is set); ``journal`` keeps completed model results in
    ``journal.sqlite`` so a crash loses no paid work. Raises ``ConfigError`` for an invalid
    config and ``StorageError`` when the output cannot be written or a resume is refused (the
    message says what changed); rows that fail permanently are dropped and listed in
    ``info.dropped_rows``.
    """
    cfg = with_run_overrides(_as_config(config), num_records=num_records, seed=seed)
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
            events_file=_events_path(events_file, output_dir),
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
    num_records: int | None = None,
    seed: int | None = None,
    progress: ProgressListener | None = None,
    events_file: str | Path | bool = True,
    report: bool = True,
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
                    num_records=num_records,
                    seed=seed,
                    progress=progress,
                    cancellation=cancellation,
                    events_file=events_file,
                    report=report,
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
    num_records: int | None = None,
    seed: int | None = None,
    progress: ProgressListener | None = None,
    resume: bool = False,
    journal: bool = True,
    events: EventBus | None = None,
    events_file: str | Path | bool = True,
    report: bool = True,
) -> GenerationResult:
    """Blocking form of :func:`generate_async`, with the same arguments and outputs.

    Inside a running event loop (a notebook cell) the run goes on a helper thread while the
    caller waits; interrupting the wait (``KeyboardInterrupt``) stops the run in order first.
    """
    cancellation = RunCancellation()

    def work() -> Coroutine[Any, Any, GenerationResult]:
        return generate_async(
            config,
            output=output,
            overwrite=overwrite,
            num_records=num_records,
            seed=seed,
            progress=progress,
            resume=resume,
            journal=journal,
            cancellation=cancellation,
            events=events,
            events_file=events_file,
            report=report,
        )

    return _run_blocking(work, cancellation)


async def preview_async(
    config: DatasetConfig | str | Path, num_records: int = 5, *, seed: int | None = None
) -> pd.DataFrame:
    """Make ``num_records`` rows in memory (nothing is written) and return them; ``seed``
    overrides ``run.seed``."""
    import pandas as pd

    small = with_run_overrides(_as_config(config), num_records=num_records, seed=seed)
    outcome = await run_dataset(small, RunOptions(output_dir=None))
    assert outcome.rows is not None
    return pd.DataFrame(outcome.rows)


def preview(
    config: DatasetConfig | str | Path, num_records: int = 5, *, seed: int | None = None
) -> pd.DataFrame:
    """Blocking form of :func:`preview_async` (on a helper thread inside a running loop)."""
    return _run_blocking(lambda: preview_async(config, num_records, seed=seed))
