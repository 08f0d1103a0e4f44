"""``sluiceway`` commands: validate, run, preview, report, bench, mock-server, and ``--version``.

Help is click's plain formatter (rich's panels truncate long option names at 80 columns, show a
type for every flag and keep the docstrings' line breaks); messages are wrapped only on a
terminal.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from sluiceway.api import preview_async, with_run_overrides
from sluiceway.bench.scenarios import SCENARIOS
from sluiceway.cli.progress import LogProgress, RichProgress
from sluiceway.config.loading import format_issues, load_config
from sluiceway.config.models import DatasetConfig
from sluiceway.engine.cancellation import RunCancellation
from sluiceway.engine.progress import ProgressListener
from sluiceway.engine.run import RunInfo, RunOptions, RunOutcome, run_dataset
from sluiceway.errors import ConfigError, RunCancelledError, RunStoppedError, SluicewayError
from sluiceway.observability import EVENTS_FILE_NAME
from sluiceway.version import __version__

app = typer.Typer(
    name="sluiceway",
    help=(
        "Generate datasets from a DAG of column generators, pushing model calls through "
        "rate-limited endpoints with layered admission control."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

ConfigArg = Annotated[
    Path,
    typer.Argument(
        metavar="CONFIG", help="Dataset config file (YAML or JSON).", show_default=False
    ),
]


def _print_version(value: bool) -> None:
    if value:
        print(f"sluiceway {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """Generate datasets from a DAG of column generators, pushing model calls through
    rate-limited endpoints with layered admission control."""


def _console(*, stderr: bool = False) -> Console:
    """A console for messages: wrapped to the width of a terminal, never wrapped when the
    output goes to a pipe or a file (a hint split over lines is hard to grep and to copy)."""
    console = Console(stderr=stderr)
    console.soft_wrap = not console.is_terminal
    return console


def _config_issues(error: ConfigError) -> str:
    """One line per issue, each naming the config file once: an issue about the file itself
    (not found, a syntax error at a line) already starts with its path."""
    source = error.source
    if not source:
        return format_issues(error)
    lines = []
    for issue in error.issues:
        text = issue.render()
        names_file = issue.path == source or issue.path.startswith(f"{source}:")
        lines.append(text if names_file else f"{source}: {text}")
    return "\n".join(lines)


def _fail(error: SluicewayError, console: Console) -> typer.Exit:
    if isinstance(error, ConfigError):
        console.print(_config_issues(error), markup=False, highlight=False)
    else:
        console.print(f"error: {error}", markup=False, highlight=False)
    return typer.Exit(code=2 if isinstance(error, ConfigError) else 1)


EXIT_CANCELLED = 130  # the shell's code for a run ended by SIGINT


async def _run_with_ctrl_c(config: DatasetConfig, options: RunOptions, err: Console) -> RunOutcome:
    """Run with Ctrl-C handling: the first press cancels in order, the second aborts at once."""
    loop = asyncio.get_running_loop()
    cancellation = options.cancellation
    assert cancellation is not None
    presses = 0

    def on_interrupt() -> None:
        nonlocal presses
        presses += 1
        if presses == 1:
            err.print(
                "cancelling: no new work starts, running tasks are cancelled and finished row "
                "groups are kept; press Ctrl-C again to abort at once",
                markup=False,
                highlight=False,
            )
            cancellation.cancel()
        else:
            err.print("aborted", markup=False, highlight=False)
            os._exit(EXIT_CANCELLED)

    try:
        loop.add_signal_handler(signal.SIGINT, on_interrupt)
        installed = True
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread / no support
        installed = False
    try:
        return await run_dataset(config, options)
    finally:
        if installed:
            loop.remove_signal_handler(signal.SIGINT)


def resume_command(
    config: Path, output_dir: Path, *, num_records: int | None, seed: int | None
) -> str:
    """The ``sluiceway run ... --resume`` command that continues a stopped run: the same config
    and output directory, and the ``-n`` / ``--seed`` overrides it was started with (resume
    refuses a run whose record count or seed differ)."""
    words = ["sluiceway", "run", str(config), "-o", str(output_dir), "--resume"]
    if num_records is not None:
        words += ["-n", str(num_records)]
    if seed is not None:
        words += ["--seed", str(seed)]
    return shlex.join(words)


def _stopped(error: RunStoppedError, console: Console, resume: str) -> typer.Exit:
    """Summary of a run that stopped before the end, with the command that continues it;
    non-zero exit."""
    console.print(f"stopped: {error}", markup=False, highlight=False)
    info = error.partial
    if isinstance(info, RunInfo):
        console.print(
            f"kept {info.rows_written:,} written row(s) of {info.num_records:,} "
            f"({info.rows_dropped:,} dropped) in {info.output_path}; "
            f"{info.model_requests:,} model requests in {info.wall_seconds:.2f} s",
            markup=False,
            highlight=False,
        )
    console.print(
        f"continue it later with --resume (finished row groups and journaled model results "
        f"are kept): {resume}",
        markup=False,
        highlight=False,
    )
    return typer.Exit(code=EXIT_CANCELLED if isinstance(error, RunCancelledError) else 1)


@app.command(short_help="Check a config and report every problem at once.")
def validate(config: ConfigArg) -> None:
    """Check a config and report every problem at once, with its place and a hint."""
    err = _console(stderr=True)
    try:
        cfg = load_config(config)
    except ConfigError as error:
        raise _fail(error, err) from None
    _console().print(
        f"{config}: valid ({len(cfg.columns)} columns, {len(cfg.models)} models, "
        f"{cfg.run.num_records} records)",
        markup=False,
        highlight=False,
    )


@app.command(short_help="Generate the dataset into an output directory.")
def run(
    config: ConfigArg,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            metavar="DIR",
            help="Output directory (default: the config's output.path).",
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a dataset already in the output directory.")
    ] = False,
    num_records: Annotated[
        int | None,
        typer.Option("--num-records", "-n", metavar="N", min=1, help="Override run.num_records."),
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", metavar="N", help="Override run.seed.")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the stopped run in the output directory: only missing row groups "
            "are generated, journaled model results are reused. The config must be unchanged: "
            "pass the same -n and --seed as the stopped run.",
        ),
    ] = False,
    journal: Annotated[
        bool,
        typer.Option(
            "--journal/--no-journal",
            help="Journal completed model results (journal.sqlite) so a crash loses no paid work.",
        ),
    ] = True,
    events: Annotated[
        Path | None,
        typer.Option(
            "--events",
            metavar="FILE",
            help="Write the scheduler and request events here (default: events.jsonl in the "
            "output directory).",
        ),
    ] = None,
    no_events: Annotated[
        bool, typer.Option("--no-events", help="Write no events file (and so no report).")
    ] = False,
    no_report: Annotated[
        bool,
        typer.Option("--no-report", help="Do not build report.md and its plots after the run."),
    ] = False,
    trace_sample_rate: Annotated[
        float | None,
        typer.Option(
            "--trace-sample-rate",
            metavar="RATE",
            min=0.0,
            max=1.0,
            help="Override run.events.trace_sample_rate: the share of task attempts whose full "
            "timeline is recorded (1 = every task attempt; aggregate events always are).",
        ),
    ] = None,
) -> None:
    """Generate the dataset and write one Parquet file per row group plus a manifest.

    Also writes events.jsonl (the scheduler and request events: every aggregate event, and the
    full timeline of a sample of task attempts) and, from it, report.md with PNG plots into the
    output directory, after the run whatever its outcome.

    Exit codes: 0 done (or nothing left to resume), 1 the run failed or stopped early, 2 an
    invalid config or command line, 130 cancelled with Ctrl-C."""
    err = _console(stderr=True)
    if events is not None and no_events:
        err.print("error: --events and --no-events exclude each other; pass one", markup=False)
        raise typer.Exit(code=2)
    try:
        cfg = with_run_overrides(load_config(config), num_records=num_records, seed=seed)
        if trace_sample_rate is not None:
            events_settings = cfg.run.events.model_copy(
                update={"trace_sample_rate": trace_sample_rate}
            )
            cfg = cfg.model_copy(
                update={"run": cfg.run.model_copy(update={"events": events_settings})}
            )
        output_dir = output or Path(cfg.output.path)
        events_file = None if no_events else (events or output_dir / EVENTS_FILE_NAME)
        progress: ProgressListener | None = None
        if not quiet:
            progress = RichProgress(err) if err.is_terminal else LogProgress()
        outcome = asyncio.run(
            _run_with_ctrl_c(
                cfg,
                RunOptions(
                    cancellation=RunCancellation(),
                    output_dir=output_dir,
                    # With --resume only an explicit --overwrite conflicts; the config's
                    # default does not apply.
                    overwrite=overwrite or (cfg.output.overwrite and not resume),
                    progress=progress,
                    resume=resume,
                    journal=journal,
                    events_file=events_file,
                    report=not no_report,
                ),
                err,
            )
        )
    except RunStoppedError as error:
        resume_with = resume_command(config, output_dir, num_records=num_records, seed=seed)
        raise _stopped(error, err, resume_with) from None
    except (KeyboardInterrupt, SystemExit) as interrupt:
        # Raised by a column's own code: the run stopped in order and kept its output.
        stopped = interrupt.__cause__
        if not isinstance(stopped, RunStoppedError):
            raise
        resume_with = resume_command(config, output_dir, num_records=num_records, seed=seed)
        _stopped(stopped, err, resume_with)
        raise
    except SluicewayError as error:
        raise _fail(error, err) from None
    info = outcome.info
    if info.already_complete:
        _console().print(
            f"the run in {info.output_path} is already complete ({info.rows_written:,} of "
            f"{info.num_records:,} rows written, {info.rows_dropped:,} dropped); nothing to do "
            "and nothing changed. Pass --overwrite instead of --resume to generate it again.",
            markup=False,
            highlight=False,
        )
        return
    rate = info.model_requests / info.wall_seconds if info.wall_seconds else 0.0
    summary = [
        ("rows written", f"{info.rows_written:,} of {info.num_records:,}"),
        ("rows dropped", f"{info.rows_dropped:,}"),
        ("model requests", f"{info.model_requests:,} ({rate:,.0f}/s)"),
        ("rate limited", f"{info.rate_limited:,}"),
        ("wall time", f"{info.wall_seconds:.2f} s"),
        ("output", str(info.output_path)),
    ]
    if events_file is not None:
        summary.append(("events", str(events_file)))
    _print_summary(_console(), "run summary", summary)
    if info.dropped_rows:
        reasons: dict[str, int] = {}
        for row in info.dropped_rows:
            key = f"{row.column}: {row.reason}"
            reasons[key] = reasons.get(key, 0) + 1
        for key, count in sorted(reasons.items(), key=lambda item: -item[1])[:5]:
            err.print(f"dropped {count} row(s) at {key}", markup=False, highlight=False)


@app.command(short_help="Print a few generated rows; nothing is written.")
def preview(
    config: ConfigArg,
    num_records: Annotated[
        int, typer.Option("--num-records", "-n", metavar="N", min=1, help="Rows to make.")
    ] = 5,
) -> None:
    """Generate a few rows in memory and print them; nothing is written."""
    err = _console(stderr=True)
    try:
        frame = asyncio.run(preview_async(load_config(config), num_records))
    except SluicewayError as error:
        raise _fail(error, err) from None
    console = _console()
    table = Table(show_lines=True)
    for column in frame.columns:
        table.add_column(str(column), overflow="fold", max_width=60)
    for record in frame.itertuples(index=False):
        table.add_row(*(_short(value) for value in record))
    console.print(table)


@app.command(short_help="Rebuild a run's report.md from its events file.")
def report(
    run_dir: Annotated[
        Path,
        typer.Argument(metavar="RUN_DIR", help="Output directory of a run.", show_default=False),
    ],
    events: Annotated[
        Path | None,
        typer.Option(
            "--events", metavar="FILE", help="Events file (default: RUN_DIR/events.jsonl)."
        ),
    ] = None,
) -> None:
    """Rebuild report.md and its plots from a run's events file (and capacity_plan.json)."""
    # Imported here: plotting pulls in matplotlib, which the other commands do not need.
    from sluiceway.observability.report import build_report

    err = _console(stderr=True)
    try:
        artifacts = build_report(run_dir, events_path=events)
    except SluicewayError as error:
        raise _fail(error, err) from None
    _console().print(f"wrote {artifacts.report_path}", markup=False, highlight=False)


def _bench_help() -> str:
    """The ``bench`` help: what it does and every scenario with its one-line summary."""
    width = max(len(name) for name in SCENARIOS)
    lines = [f"  {name:<{width}}  {scenario.summary}" for name, scenario in SCENARIOS.items()]
    return (
        "Run benchmark scenarios (docs/benchmarks.md) and write JSON, CSV and Markdown "
        "results.\n\n\b\nScenarios ('all' runs every one):\n" + "\n".join(lines)
    )


@app.command(short_help="Run benchmark scenarios and write their results.", help=_bench_help())
def bench(
    scenario: Annotated[
        str | None,
        typer.Argument(
            metavar="SCENARIO", help="Scenario name (listed above), or 'all'.", show_default=False
        ),
    ] = None,
    output: Annotated[
        Path,
        typer.Option("--output", "-o", metavar="DIR", help="Directory for the result files."),
    ] = Path("out/bench"),
    iterations: Annotated[int, typer.Option(metavar="N", min=1, help="Measured iterations.")] = 5,
    warmup: Annotated[int, typer.Option(metavar="N", min=0, help="Warmup iterations.")] = 1,
    records: Annotated[
        int | None, typer.Option(metavar="N", min=1, help="Override the records.")
    ] = None,
    smoke: Annotated[bool, typer.Option("--smoke", help="Tiny sizes, one iteration.")] = False,
    compare: Annotated[
        tuple[str, str] | None,
        typer.Option(metavar="REF_A REF_B", help="Compare two git refs, paired iterations."),
    ] = None,
) -> None:
    from sluiceway.bench.command import run_bench
    from sluiceway.bench.runner import BenchSettings

    err = _console(stderr=True)
    settings = BenchSettings(
        output_dir=output, warmup=warmup, iterations=iterations, smoke=smoke, records=records
    )
    try:
        run_bench(scenario, settings, compare=compare, echo=lambda line: err.print(line))
    except SluicewayError as error:
        raise _fail(error, err) from None


def _share(help: str) -> Any:
    """A fault-rate flag: a share in [0, 1], checked by the command line, so an error names the
    flag (not the settings field behind it)."""
    return typer.Option(metavar="SHARE", min=0.0, max=1.0, help=help)


@app.command("mock-server", short_help="Serve an OpenAI-compatible mock endpoint locally.")
def mock_server(
    port: Annotated[
        int,
        typer.Option(metavar="N", min=0, max=65535, help="Port on 127.0.0.1 (0 picks a free one)."),
    ] = 8000,
    latency_seconds: Annotated[
        float, typer.Option(metavar="SECONDS", min=0.0, help="Fixed latency per request.")
    ] = 0.0,
    latency_tail_seconds: Annotated[
        float, typer.Option(metavar="SECONDS", min=0.0, help="Mean lognormal tail.")
    ] = 0.0,
    capacity: Annotated[
        int | None, typer.Option(metavar="N", min=1, help="Concurrent requests per model.")
    ] = None,
    rpm: Annotated[
        int | None, typer.Option(metavar="N", min=1, help="Requests per minute per model.")
    ] = None,
    tpm: Annotated[
        int | None, typer.Option(metavar="N", min=1, help="Tokens per minute per model.")
    ] = None,
    queueing: Annotated[bool, typer.Option(help="Slow down instead of answering 429.")] = False,
    retry_after_format: Annotated[
        str,
        typer.Option(metavar="FORMAT", help="Retry-After form: seconds, http-date, ms or none."),
    ] = "seconds",
    retry_after_seconds: Annotated[
        float, typer.Option(metavar="SECONDS", min=0.0, help="Retry-After on 429.")
    ] = 1.0,
    error_500_rate: Annotated[float, _share("Share answered 500.")] = 0.0,
    error_503_rate: Annotated[float, _share("Share answered 503.")] = 0.0,
    error_529_rate: Annotated[float, _share("Share answered 529 (overloaded).")] = 0.0,
    hang_rate: Annotated[float, _share("Share that hangs (--hang-seconds).")] = 0.0,
    hang_seconds: Annotated[
        float | None,
        typer.Option(
            metavar="SECONDS", min=0.0, help="A hang lasts this long and keeps its slot that long."
        ),
    ] = None,
    reset_rate: Annotated[float, _share("Share with a connection reset.")] = 0.0,
    malformed_rate: Annotated[float, _share("Share with a malformed body.")] = 0.0,
    api_key_env: Annotated[
        str | None,
        typer.Option(metavar="NAME", help="Require the key held by this environment variable."),
    ] = None,
    seed: Annotated[int, typer.Option(metavar="N", help="Seed of content and faults.")] = 0,
    count_by_content: Annotated[
        bool, typer.Option(help="Count requests per content hash in /stats.")
    ] = False,
    window_seconds: Annotated[
        float,
        typer.Option(
            metavar="SECONDS",
            min=0.001,
            help="Length of the RPM/TPM windows (providers count per 60 s).",
        ),
    ] = 60.0,
    rate_window: Annotated[
        str, typer.Option(help="RPM/TPM windows: rolling or bucket (refilled continuously).")
    ] = "rolling",
    capacity_schedule: Annotated[
        list[str] | None,
        typer.Option(help="[MODEL=]SECONDS:VALUE,... e.g. 0:32,10:8,20:32 (repeatable)."),
    ] = None,
    rpm_schedule: Annotated[
        list[str] | None, typer.Option(help="RPM on a schedule, as --capacity-schedule.")
    ] = None,
    tpm_schedule: Annotated[
        list[str] | None, typer.Option(help="TPM on a schedule, as --capacity-schedule.")
    ] = None,
    competitor: Annotated[
        list[str] | None,
        typer.Option(help="start=0,duration=10,slots=24,mode=polite|retry-at-once (repeatable)."),
    ] = None,
    schedule_epoch: Annotated[
        str, typer.Option(help="Second 0 of schedules: start or first-request.")
    ] = "start",
) -> None:
    """Serve an OpenAI- and Anthropic-compatible mock endpoint on 127.0.0.1 (GET /stats)."""
    from sluiceway.providers.behaviour import EndpointLimit, RateWindowKind, SimulationSettings
    from sluiceway.providers.mock_competitor import parse_competitor
    from sluiceway.providers.mock_schedule import ScheduleEpoch, parse_limit_schedule
    from sluiceway.providers.mock_server import MockServerSettings, RetryAfterFormat, serve

    err = _console(stderr=True)
    api_key = None
    if api_key_env is not None:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            err.print(
                f"error: --api-key-env {api_key_env}: the environment variable {api_key_env} is "
                "not set or empty; export the key in it, or leave out --api-key-env to serve "
                "without a key",
                markup=False,
                highlight=False,
            )
            raise typer.Exit(code=2)
    for flag, value, kinds in (
        ("--retry-after-format", retry_after_format, RetryAfterFormat),
        ("--rate-window", rate_window, RateWindowKind),
        ("--schedule-epoch", schedule_epoch, ScheduleEpoch),
    ):
        if value not in {kind.value for kind in kinds}:
            choices = ", ".join(kind.value for kind in kinds)
            err.print(
                f"error: {flag} must be one of {choices}, got {value!r}",
                markup=False,
                highlight=False,
            )
            raise typer.Exit(code=2)
    try:
        schedules = tuple(
            parse_limit_schedule(text, limit, source=flag)
            for flag, texts, limit in (
                ("--capacity-schedule", capacity_schedule, EndpointLimit.CAPACITY),
                ("--rpm-schedule", rpm_schedule, EndpointLimit.RPM),
                ("--tpm-schedule", tpm_schedule, EndpointLimit.TPM),
            )
            for text in texts or ()
        )
        settings = MockServerSettings(
            simulation=SimulationSettings(
                latency_seconds=latency_seconds,
                latency_tail_seconds=latency_tail_seconds,
                capacity=capacity,
                rpm=rpm,
                tpm=tpm,
                queueing=queueing,
                retry_after_seconds=retry_after_seconds,
                rate_window=RateWindowKind(rate_window),
                window_seconds=window_seconds,
            ),
            seed=seed,
            api_key=api_key,
            retry_after_format=RetryAfterFormat(retry_after_format),
            error_500_rate=error_500_rate,
            error_503_rate=error_503_rate,
            error_529_rate=error_529_rate,
            hang_rate=hang_rate,
            hang_seconds=hang_seconds,
            reset_rate=reset_rate,
            malformed_rate=malformed_rate,
            count_by_content=count_by_content,
            schedules=schedules,
            competitors=tuple(
                parse_competitor(text, source="--competitor") for text in competitor or ()
            ),
            schedule_epoch=ScheduleEpoch(schedule_epoch),
        )
    except SluicewayError as error:
        raise _fail(error, err) from None
    listening = False

    def ready(server: object) -> None:
        nonlocal listening
        listening = True
        err.print(f"mock server listening on {getattr(server, 'base_url', '')}", highlight=False)

    try:
        asyncio.run(serve(settings, port=port, on_ready=ready))
    except KeyboardInterrupt:
        err.print("mock server stopped")
    except OSError as error:
        if listening:
            raise
        err.print(f"error: {_listen_failure(port, error)}", markup=False, highlight=False)
        raise typer.Exit(code=1) from None


def _listen_failure(port: int, error: OSError) -> str:
    """Why the mock server could not listen on ``port``, and what to do about it."""
    where = f"cannot listen on 127.0.0.1:{port}"
    other_port = "pass another --port (--port 0 picks a free one)"
    if error.errno == errno.EADDRINUSE:
        return (
            f"{where}: the port is already in use (another mock server or program holds it); "
            f"stop that program or {other_port}"
        )
    if error.errno == errno.EACCES:
        return f"{where}: permission denied (ports below 1024 need privileges); {other_port}"
    return f"{where}: {error.strerror or error}; {other_port}"


def _print_summary(console: Console, title: str, rows: list[tuple[str, str]]) -> None:
    """A table on a terminal; ``name: value`` lines elsewhere (never cut to a width)."""
    if console.is_terminal:
        table = Table(title=title, show_header=False, title_justify="left")
        for name, value in rows:
            table.add_row(name, value)
        console.print(table)
        return
    console.print(title, markup=False, highlight=False)
    for name, value in rows:
        console.print(f"  {name}: {value}", markup=False, highlight=False)


def _short(value: object, limit: int = 240) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def main() -> None:
    # Custom-column references such as `my_columns:make_title` resolve against the working
    # directory, as they would under `python -m`.
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    app(prog_name="sluiceway")


if __name__ == "__main__":  # pragma: no cover
    main()
