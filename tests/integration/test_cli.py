"""The command line: validate, run and preview, as a user calls them."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from integration_configs import base_config
from typer.testing import CliRunner

from sluiceway.cli.app import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _write(tmp_path: Path, config: dict[str, object]) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_validate_accepts_the_quickstart() -> None:
    result = runner.invoke(app, ["validate", str(ROOT / "examples" / "quickstart.yaml")])
    assert result.exit_code == 0, result.output
    assert "valid" in result.output


def test_validate_reports_every_problem_with_its_place(tmp_path: Path) -> None:
    config = base_config()
    config["run"]["num_records"] = "many"
    config["columns"][4]["model"] = "writter"
    config["columns"][3]["template"] = "{{ nope }}"
    result = runner.invoke(app, ["validate", str(_write(tmp_path, config))])
    assert result.exit_code == 2
    assert "run.num_records" in result.output
    assert "writter" in result.output
    assert "nope" in result.output


def test_run_writes_the_dataset_and_prints_a_summary(tmp_path: Path) -> None:
    out = tmp_path / "dataset"
    result = runner.invoke(
        app, ["run", str(_write(tmp_path, base_config(num_records=9))), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "rows written" in result.output
    assert "9 of 9" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rows_written"] == 9
    assert "progress:" in result.output  # not a terminal: plain progress lines


def test_run_refuses_to_overwrite_a_dataset_without_the_flag(tmp_path: Path) -> None:
    out = tmp_path / "dataset"
    config = _write(tmp_path, base_config(num_records=3))
    assert runner.invoke(app, ["run", str(config), "-o", str(out), "-q"]).exit_code == 0
    again = runner.invoke(app, ["run", str(config), "-o", str(out), "-q"])
    assert again.exit_code == 1
    assert "--overwrite" in again.output
    assert (
        runner.invoke(app, ["run", str(config), "-o", str(out), "-q", "--overwrite"]).exit_code == 0
    )


def test_preview_prints_rows_and_writes_nothing(tmp_path: Path) -> None:
    config = base_config(num_records=50)
    config["output"] = {"path": str(tmp_path / "never")}
    result = runner.invoke(app, ["preview", str(_write(tmp_path, config)), "-n", "3"])
    assert result.exit_code == 0, result.output
    assert "topic" in result.output
    assert not (tmp_path / "never").exists()


def test_help_lists_the_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("run", "preview", "validate"):
        assert command in result.output


def test_a_storage_failure_is_a_clean_error_naming_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "taken"
    blocker.write_text("not a directory")
    config = _write(tmp_path, base_config(num_records=3))
    result = runner.invoke(app, ["run", str(config), "-o", str(blocker), "-q"])
    assert result.exit_code == 1
    assert "error:" in result.output
    assert str(blocker) in result.output.replace("\n", "")
    assert blocker.read_text() == "not a directory"


def test_overwrite_keeps_the_users_files_of_every_kind_sluiceway_writes(tmp_path: Path) -> None:
    out = tmp_path / "dataset"
    config = _write(tmp_path, base_config(num_records=9))
    assert runner.invoke(app, ["run", str(config), "-o", str(out), "-q"]).exit_code == 0
    ours = {path.name for path in out.iterdir()}
    assert {"manifest.json", "events.jsonl", "report.md", "part-000000.parquet"} <= ours
    user_files = {
        "notes.txt": b"my notes",
        "my_chart.png": b"\x89PNG user chart",
        "report-old.png": b"\x89PNG older report",
        "events-old.jsonl": b'{"mine": true}\n',
        "report-draft.md": b"# draft",
        "mine.parquet": b"PAR1 user data PAR1",
        "part-000099.parquet": b"PAR1 user data PAR1",
        "backup.tmp": b"user temp",
        "old-run_config.json": b"{}",
    }
    for name, data in user_files.items():
        (out / name).write_bytes(data)

    again = runner.invoke(app, ["run", str(config), "-o", str(out), "-q", "--overwrite"])

    assert again.exit_code == 0, again.output
    for name, data in user_files.items():
        assert (out / name).read_bytes() == data, name
    assert json.loads((out / "manifest.json").read_text())["rows_written"] == 9


def _files(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {
        path.name: (path.read_bytes(), path.stat().st_mtime_ns)
        for path in sorted(directory.iterdir())
    }


def test_resuming_a_finished_run_says_so_and_changes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "dataset"
    config = _write(tmp_path, base_config(num_records=9))
    assert runner.invoke(app, ["run", str(config), "-o", str(out), "-q"]).exit_code == 0
    before = _files(out)
    assert {"events.jsonl", "report.md", "manifest.json"} <= set(before)

    result = runner.invoke(app, ["run", str(config), "-o", str(out), "--resume"])

    assert result.exit_code == 0, result.output
    assert "already complete" in result.output
    assert "9 of 9 rows written" in result.output
    assert "run started" not in result.output
    assert _files(out) == before


def _failing_config() -> dict[str, object]:
    """Every model request fails: the run stops early (exit 1) after a few dropped rows."""
    return {
        "providers": [{"name": "sim", "type": "simulated", "simulation": {"failure_rate": 1.0}}],
        "models": [{"alias": "m", "provider": "sim", "model": "m-1", "max_parallel_requests": 2}],
        "columns": [
            {"name": "who", "type": "sampler", "sampler": {"kind": "uuid"}},
            {"name": "text", "type": "llm_text", "model": "m", "prompt": "About {{ who }}"},
        ],
        "run": {
            "num_records": 10,
            "buffer_size": 5,
            "retry": {"max_attempts": 1},
            "early_shutdown": {"window": 10, "min_outcomes": 5, "max_error_rate": 0.5},
        },
    }


def test_a_stopped_run_prints_the_resume_command_with_its_overrides(tmp_path: Path) -> None:
    out = tmp_path / "dataset"
    config = _write(tmp_path, _failing_config())

    stopped = runner.invoke(app, ["run", str(config), "-o", str(out), "-q", "-n", "40"])

    assert stopped.exit_code == 1, stopped.output
    assert "stopped:" in stopped.output
    command = f"sluiceway run {config} -o {out} --resume -n 40"
    assert command in stopped.output.replace("\n", " ")
    # Without `-n 40` the resume is refused, and the refusal says to pass it again.
    refused = runner.invoke(app, ["run", str(config), "-o", str(out), "-q", "--resume"])
    assert refused.exit_code == 1
    text = " ".join(refused.output.split())
    assert "pass `-n 40` again with --resume" in text
    assert "num_records=40" in text
    # The printed command is accepted: the run goes on (and stops again on its failures).
    resumed = runner.invoke(app, [*command.split()[1:], "-q"])
    assert "cannot resume" not in resumed.output
    assert "stopped:" in resumed.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_records"] == 40


def test_a_refused_resume_names_the_seed_given_on_the_command_line(tmp_path: Path) -> None:
    out = tmp_path / "dataset"
    config = _write(tmp_path, _failing_config())
    args = ["run", str(config), "-o", str(out), "-q"]
    assert runner.invoke(app, [*args, "-n", "40", "--seed", "5"]).exit_code == 1

    refused = runner.invoke(app, [*args, "--resume"])

    assert refused.exit_code == 1
    text = " ".join(refused.output.split())
    assert "pass `-n 40 --seed 5` again with --resume" in text
    assert "num_records=40, seed=5" in text


def test_a_missing_config_is_named_once_on_one_unwrapped_line(tmp_path: Path) -> None:
    missing = tmp_path / ("a-directory-with-a-rather-long-name-" * 3) / "quickstrt.yaml"

    result = runner.invoke(app, ["run", str(missing)])

    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [f"{missing}: config file not found (hint: check the path)"]


def test_messages_are_not_wrapped_when_the_output_is_not_a_terminal(tmp_path: Path) -> None:
    config = base_config()
    config["columns"][4]["model"] = "writter"
    config["columns"][3]["template"] = "{{ nope }}"
    path = _write(tmp_path, config)

    result = runner.invoke(app, ["validate", str(path)])

    assert result.exit_code == 2
    lines = result.output.splitlines()
    assert len(lines) == 2, result.output  # one line per issue, however long
    assert all(line.startswith(f"{path}: columns[") for line in lines), lines
    assert any(len(line) > 100 for line in lines)


def test_the_run_summary_is_not_cut_to_the_width_when_piped(tmp_path: Path) -> None:
    out = tmp_path / ("an-output-directory-with-a-long-name-" * 3)
    config = _write(tmp_path, base_config(num_records=3))

    result = runner.invoke(app, ["run", str(config), "-o", str(out), "-q", "--no-events"])

    assert result.exit_code == 0, result.output
    assert f"output: {out}" in result.output.splitlines()[-1]
