"""The Python API as a user calls it: what ``import sluiceway`` offers, the files ``generate``
writes (the same as ``sluiceway run``), its overrides, and calls from inside a running loop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from integration_configs import base_config
from typer.testing import CliRunner

import sluiceway
from sluiceway import ConfigError, DatasetConfig, generate, load_dataset, preview
from sluiceway.cli.app import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _config(num_records: int = 9) -> DatasetConfig:
    return DatasetConfig.model_validate(base_config(num_records=num_records))


def test_dir_lists_exactly_the_public_api() -> None:
    names = dir(sluiceway)

    assert names == sorted(sluiceway.__all__)
    for public in ("generate", "generate_async", "preview", "load_config", "DatasetConfig"):
        assert public in names
    for internal in ("Any", "TYPE_CHECKING", "annotations", "version", "importlib"):
        assert internal not in names
    for name in sluiceway.__all__:
        assert getattr(sluiceway, name) is not None, name
    namespace: dict[str, object] = {}
    exec("from sluiceway import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(sluiceway.__all__)


def test_import_sluiceway_stays_lazy() -> None:
    code = (
        "import sys, sluiceway; print(sorted(m for m in sys.modules if m.startswith('sluiceway')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == "['sluiceway', 'sluiceway.version']"


def test_generate_writes_the_events_and_report_that_sluiceway_run_writes(tmp_path: Path) -> None:
    out = tmp_path / "api"
    result = generate(_config(), output=out)

    assert result.info.rows_written == 9
    assert (out / "events.jsonl").is_file()
    assert (out / "report.md").is_file()
    cli_out = tmp_path / "cli"
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(base_config(num_records=9)))
    assert runner.invoke(app, ["run", str(config_file), "-o", str(cli_out), "-q"]).exit_code == 0
    assert {p.name for p in out.iterdir()} == {p.name for p in cli_out.iterdir()}
    # The report can be rebuilt from what generate() wrote.
    rebuilt = runner.invoke(app, ["report", str(out)])
    assert rebuilt.exit_code == 0, rebuilt.output


def test_generate_turns_the_events_file_and_report_off_or_moves_the_events(
    tmp_path: Path,
) -> None:
    out = tmp_path / "plain"
    generate(_config(), output=out, events_file=False)
    assert not (out / "events.jsonl").exists()
    assert not (out / "report.md").exists()

    out = tmp_path / "no-report"
    generate(_config(), output=out, report=False)
    assert (out / "events.jsonl").is_file()
    assert not (out / "report.md").exists()

    out = tmp_path / "moved"
    elsewhere = tmp_path / "logs" / "run-events.jsonl"
    generate(_config(), output=out, events_file=elsewhere)
    assert elsewhere.is_file()
    assert not (out / "events.jsonl").exists()
    assert (out / "report.md").is_file()


def test_generate_overrides_num_records_and_seed_like_the_command_line(tmp_path: Path) -> None:
    result = generate(_config(), output=tmp_path / "api", num_records=7, seed=3, report=False)

    assert result.info.num_records == 7
    assert result.info.seed == 3
    assert len(result.dataframe) == 7
    manifest = json.loads((tmp_path / "api" / "manifest.json").read_text())
    assert (manifest["num_records"], manifest["seed"]) == (7, 3)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(base_config(num_records=9)))
    args = ["run", str(config_file), "-o", str(tmp_path / "cli"), "-q", "-n", "7", "--seed", "3"]
    assert runner.invoke(app, args).exit_code == 0
    pd.testing.assert_frame_equal(load_dataset(tmp_path / "cli"), result.dataframe)


def test_a_num_records_below_one_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="num_records is 0"):
        generate(_config(), output=tmp_path / "out", num_records=0)
    assert not (tmp_path / "out").exists()


def test_preview_takes_a_seed_override() -> None:
    first = preview(_config(), 4, seed=1)
    again = preview(_config(), 4, seed=1)
    other = preview(_config(), 4, seed=2)

    pd.testing.assert_frame_equal(first, again)
    assert not first.equals(other)


async def test_the_blocking_api_works_inside_a_running_event_loop(tmp_path: Path) -> None:
    # As in a notebook cell: a loop runs on this thread, and the user calls the sync API.
    result = generate(_config(), output=tmp_path / "out", events_file=False)
    rows = preview(_config(), 3)

    assert result.info.rows_written == 9
    assert len(result.dataframe) == 9
    assert len(rows) == 3
