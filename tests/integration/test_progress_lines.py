"""The plain progress lines of a whole run: the final state is printed once, at the run's rate."""

from __future__ import annotations

import io
import re
from pathlib import Path

from integration_configs import base_config

from sluiceway.cli.progress import LogProgress
from sluiceway.config.models import DatasetConfig
from sluiceway.engine.run import RunOptions, run_dataset


async def test_the_final_progress_line_is_printed_once_at_the_runs_rate(tmp_path: Path) -> None:
    config = DatasetConfig.model_validate(base_config(num_records=40, buffer_size=5))
    stream = io.StringIO()

    # Progress every 2 ms: the checkpoints, the last one included, and the periodic refresh
    # all want to print lines, also after the last row group is done.
    outcome = await run_dataset(
        config,
        RunOptions(
            output_dir=tmp_path / "out",
            progress=LogProgress(stream),
            progress_interval_seconds=0.002,
        ),
    )

    lines = stream.getvalue().splitlines()
    final = [line for line in lines if line.startswith("progress: 40/40 records")]
    assert len(final) == 1, final
    assert final[0] == lines[-1]
    rate = re.search(r"([\d.]+) rows/s", final[0])
    assert rate is not None
    # The same wall time as the run's summary (RunInfo.wall_seconds), not a later reading.
    assert rate.group(1) == f"{40 / outcome.info.wall_seconds:.1f}"
    assert "eta 0s" in final[0]
