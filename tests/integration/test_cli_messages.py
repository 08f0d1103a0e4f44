"""What the command line says before any work starts: help, version, flag errors, a busy port."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import sluiceway
from sluiceway.bench.scenarios import SCENARIOS
from sluiceway.cli.app import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()
COMMANDS = ("validate", "run", "preview", "report", "bench", "mock-server")


def _option_names(command: str) -> list[str]:
    """Every option spelling of ``command`` (``--x``, ``-x``, ``--no-x``), from its definition."""
    params = typer.main.get_command(app).commands[command].params  # type: ignore[attr-defined]
    return [
        option
        for param in params
        for option in [*param.opts, *param.secondary_opts]
        if option.startswith("-")
    ]


def _description(help_text: str) -> list[list[str]]:
    """The paragraphs between the usage line and the first section, as lists of lines."""
    lines = [line.rstrip() for line in help_text.splitlines()]
    start = next(i for i, line in enumerate(lines) if "Usage:" in line) + 1
    end = next(
        i
        for i, line in enumerate(lines)
        if line.startswith(("Arguments:", "Options:")) or "╭" in line
    )
    text = "\n".join(lines[start:end])
    return [p.strip("\n").splitlines() for p in text.split("\n\n") if p.strip()]


@pytest.mark.parametrize("name", COMMANDS)
def test_help_shows_every_option_whole_without_a_type_for_flags(name: str) -> None:
    result = runner.invoke(app, [name, "--help"])

    assert result.exit_code == 0, result.output
    options = _option_names(name)
    assert options or name == "validate"
    for option in [*options, "--help"]:
        assert re.search(rf"(^|[\s,/]){re.escape(option)}([\s,]|$)", result.output, re.M), option
    assert "<bool>" not in result.output
    assert "…" not in result.output
    # No word is split at a hyphen across lines (an option name would be cut in two).
    assert re.search(r"[A-Za-z]-\n", result.output) is None, result.output


@pytest.mark.parametrize("name", COMMANDS)
def test_help_paragraphs_are_filled_not_broken_mid_line(name: str) -> None:
    result = runner.invoke(app, [name, "--help"])

    for lines in _description(result.output):
        if lines[0].strip().endswith(":"):  # a listing (bench scenarios), kept line by line
            continue
        # Every line but a paragraph's last is filled close to the 80-column width.
        assert all(len(line.rstrip()) > 60 for line in lines[:-1]), lines


def test_top_level_help_lists_each_command_with_a_whole_sentence() -> None:
    result = runner.invoke(app, ["--help"])

    assert result.exit_code == 0
    listing = result.output.split("Commands:\n", 1)[1].splitlines()
    assert [line.split()[0] for line in listing if line.strip()] == list(COMMANDS)
    assert all(line.rstrip().endswith(".") for line in listing if line.strip()), listing
    assert "--version" in result.output


def test_bench_help_lists_every_scenario_with_its_summary() -> None:
    result = runner.invoke(app, ["bench", "--help"])

    assert result.exit_code == 0
    for name, scenario in SCENARIOS.items():
        assert re.search(
            rf"^\s+{re.escape(name)}\s+{re.escape(scenario.summary)}$", result.output, re.M
        )


def test_version_flag_prints_the_package_version() -> None:
    result = runner.invoke(app, ["--version"])

    assert result.exit_code == 0
    assert result.output == f"sluiceway {sluiceway.__version__}\n"


def test_python_dash_m_sluiceway_runs_the_command_line(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    version = subprocess.run(
        [sys.executable, "-m", "sluiceway", "--version"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert version.returncode == 0, version.stderr
    assert version.stdout == f"sluiceway {sluiceway.__version__}\n"

    validate = subprocess.run(
        [sys.executable, "-m", "sluiceway", "validate", str(ROOT / "examples" / "quickstart.yaml")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert validate.returncode == 0, validate.stderr
    assert "valid" in validate.stdout


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--error-500-rate", "1.5"),
        ("--error-503-rate", "-0.1"),
        ("--hang-rate", "2"),
        ("--reset-rate", "7"),
        ("--malformed-rate", "1.01"),
        ("--latency-seconds", "-1"),
        ("--latency-tail-seconds", "-1"),
        ("--retry-after-seconds", "-1"),
        ("--capacity", "0"),
        ("--rpm", "0"),
        ("--tpm", "0"),
        ("--port", "70000"),
        ("--retry-after-format", "minutes"),
    ],
)
def test_mock_server_flag_errors_name_the_flag(flag: str, value: str) -> None:
    result = runner.invoke(app, ["mock-server", flag, value])

    assert result.exit_code == 2
    assert flag in result.output
    assert "MockServerSettings" not in result.output
    assert "simulation." not in result.output
    assert "Traceback" not in result.output


def test_mock_server_needs_the_key_variable_it_is_told_to_use() -> None:
    name = "SLUICEWAY_TEST_KEY_THAT_IS_NOT_SET"
    assert name not in os.environ

    result = runner.invoke(app, ["mock-server", "--api-key-env", name])

    assert result.exit_code == 2
    assert f"--api-key-env {name}" in result.output
    assert "not set" in result.output


def test_mock_server_on_a_busy_port_says_so_in_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        result = runner.invoke(app, ["mock-server", "--port", str(port)])

    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "Errno" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert f"127.0.0.1:{port}" in lines[0]
    assert "already in use" in lines[0]
    assert "--port 0" in lines[0]
