"""The public Python API: run a config and get a pandas DataFrame plus run info.

    from sluiceway import generate
    result = generate("examples/quickstart.yaml", output="out/quickstart", overwrite=True)
    result.dataframe.head()

``generate`` blocks until the run ends; ``generate_async`` is the same coroutine for code that
already runs an event loop. ``preview`` makes a few rows in memory and writes nothing.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sluiceway.config.loading import load_config
from sluiceway.config.models import DatasetConfig
from sluiceway.engine.progress import ProgressListener
from sluiceway.engine.run import RunInfo, RunOptions, run_dataset
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
) -> GenerationResult:
    """Run ``config`` and write the dataset to ``output`` (default: the config's output path).

    Raises ``ConfigError`` for an invalid config and ``StorageError`` when the output cannot be
    written; rows that fail permanently are dropped and listed in ``info.dropped_rows``.
    """
    cfg = _as_config(config)
    output_dir = Path(output if output is not None else cfg.output.path)
    outcome = await run_dataset(
        cfg,
        RunOptions(
            output_dir=output_dir,
            overwrite=cfg.output.overwrite if overwrite is None else overwrite,
            progress=progress,
        ),
    )
    return GenerationResult(dataframe=load_dataset(output_dir), info=outcome.info)


def generate(
    config: DatasetConfig | str | Path,
    *,
    output: str | Path | None = None,
    overwrite: bool | None = None,
    progress: ProgressListener | None = None,
) -> GenerationResult:
    """Blocking form of :func:`generate_async` (do not call it from a running event loop)."""
    return asyncio.run(
        generate_async(config, output=output, overwrite=overwrite, progress=progress)
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
