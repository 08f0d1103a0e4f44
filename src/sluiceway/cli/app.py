"""``sluiceway`` commands: run, preview, validate, report, mock-server."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from sluiceway.api import preview_async
from sluiceway.cli.progress import LogProgress, RichProgress
from sluiceway.config.loading import format_issues, load_config
from sluiceway.config.models import DatasetConfig
from sluiceway.engine.cancellation import RunCancellation
from sluiceway.engine.progress import ProgressListener
from sluiceway.engine.run import RunInfo, RunOptions, RunOutcome, run_dataset
from sluiceway.errors import ConfigError, RunCancelledError, RunStoppedError, SluicewayError
from sluiceway.observability import EVENTS_FILE_NAME

app = typer.Typer(
    name="sluiceway",
    help=(
        "Generate datasets from a DAG of column generators, pushing model calls through "
        "rate-limited endpoints with layered admission control."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigArg = Annotated[
    Path, typer.Argument(help="Dataset config file (YAML or JSON).", show_default=False)
]


def _fail(error: SluicewayError, console: Console) -> typer.Exit:
    if isinstance(error, ConfigError):
        console.print(format_issues(error), markup=False, highlight=False)
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


def _stopped(error: RunStoppedError, console: Console) -> typer.Exit:
    """Summary of a run that stopped before the end; non-zero exit."""
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
    return typer.Exit(code=EXIT_CANCELLED if isinstance(error, RunCancelledError) else 1)


@app.command()
def validate(config: ConfigArg) -> None:
    """Check a config and report every problem at once, with its place and a hint."""
    err = Console(stderr=True)
    try:
        cfg = load_config(config)
    except ConfigError as error:
        raise _fail(error, err) from None
    Console().print(
        f"{config}: valid ({len(cfg.columns)} columns, {len(cfg.models)} models, "
        f"{cfg.run.num_records} records)",
        markup=False,
        highlight=False,
    )


@app.command()
def run(
    config: ConfigArg,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Output directory (default: the config's output.path)."
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a dataset already in the output directory.")
    ] = False,
    num_records: Annotated[
        int | None, typer.Option("--num-records", "-n", min=1, help="Override run.num_records.")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Override run.seed.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the stopped run in the output directory: only missing row groups "
            "are generated, journaled model results are reused (the config must be unchanged).",
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
            min=0.0,
            max=1.0,
            help="Override run.events.trace_sample_rate: the share of task attempts whose full "
            "timeline is recorded (1 = every task attempt; aggregate events always are).",
        ),
    ] = None,
) -> None:
    """Generate the dataset and write one Parquet file per row group plus a manifest.

    Also writes events.jsonl (the scheduler and request events: every aggregate event, and the
    full timeline of a sample of task attempts, see --trace-sample-rate) and, from it, report.md
    with PNG plots into the output directory, after the run whatever its outcome."""
    err = Console(stderr=True)
    if events is not None and no_events:
        err.print("error: --events and --no-events exclude each other; pass one", markup=False)
        raise typer.Exit(code=2)
    try:
        cfg = load_config(config)
        updates: dict[str, object] = {}
        if num_records is not None:
            updates["num_records"] = num_records
        if seed is not None:
            updates["seed"] = seed
        if trace_sample_rate is not None:
            updates["events"] = cfg.run.events.model_copy(
                update={"trace_sample_rate": trace_sample_rate}
            )
        if updates:
            cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update=updates)})
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
        raise _stopped(error, err) from None
    except SluicewayError as error:
        raise _fail(error, err) from None
    info = outcome.info
    rate = info.model_requests / info.wall_seconds if info.wall_seconds else 0.0
    table = Table(title="run summary", show_header=False, title_justify="left")
    table.add_row("rows written", f"{info.rows_written:,} of {info.num_records:,}")
    table.add_row("rows dropped", f"{info.rows_dropped:,}")
    table.add_row("model requests", f"{info.model_requests:,} ({rate:,.0f}/s)")
    table.add_row("rate limited", f"{info.rate_limited:,}")
    table.add_row("wall time", f"{info.wall_seconds:.2f} s")
    table.add_row("output", str(info.output_path))
    if events_file is not None:
        table.add_row("events", str(events_file))
    Console().print(table)
    if info.dropped_rows:
        reasons: dict[str, int] = {}
        for row in info.dropped_rows:
            key = f"{row.column}: {row.reason}"
            reasons[key] = reasons.get(key, 0) + 1
        for key, count in sorted(reasons.items(), key=lambda item: -item[1])[:5]:
            err.print(f"dropped {count} row(s) at {key}", markup=False, highlight=False)


@app.command()
def preview(
    config: ConfigArg,
    num_records: Annotated[int, typer.Option("--num-records", "-n", min=1)] = 5,
) -> None:
    """Generate a few rows in memory and print them; nothing is written."""
    err = Console(stderr=True)
    try:
        frame = asyncio.run(preview_async(load_config(config), num_records))
    except SluicewayError as error:
        raise _fail(error, err) from None
    console = Console()
    table = Table(show_lines=True)
    for column in frame.columns:
        table.add_column(str(column), overflow="fold", max_width=60)
    for record in frame.itertuples(index=False):
        table.add_row(*(_short(value) for value in record))
    console.print(table)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="Output directory of a run.", show_default=False)],
    events: Annotated[
        Path | None,
        typer.Option("--events", help="Events file (default: RUN_DIR/events.jsonl)."),
    ] = None,
) -> None:
    """Rebuild report.md and its plots from a run's events file (and capacity_plan.json)."""
    # Imported here: plotting pulls in matplotlib, which the other commands do not need.
    from sluiceway.observability.report import build_report

    err = Console(stderr=True)
    try:
        artifacts = build_report(run_dir, events_path=events)
    except SluicewayError as error:
        raise _fail(error, err) from None
    Console().print(f"wrote {artifacts.report_path}", markup=False, highlight=False)


@app.command()
def bench(
    scenario: Annotated[
        str | None, typer.Argument(help="Scenario name, or 'all'.", show_default=False)
    ] = None,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Directory for the result files.")
    ] = Path("out/bench"),
    iterations: Annotated[int, typer.Option(min=1, help="Measured iterations.")] = 5,
    warmup: Annotated[int, typer.Option(min=0, help="Warmup iterations.")] = 1,
    records: Annotated[int | None, typer.Option(min=1, help="Override the records.")] = None,
    smoke: Annotated[bool, typer.Option("--smoke", help="Tiny sizes, one iteration.")] = False,
    compare: Annotated[
        tuple[str, str] | None,
        typer.Option(help="Compare two git refs (REF_A REF_B), paired iterations."),
    ] = None,
) -> None:
    """Run benchmark scenarios (docs/benchmarks.md) and write JSON, CSV and Markdown results."""
    from sluiceway.bench.command import run_bench
    from sluiceway.bench.runner import BenchSettings

    err = Console(stderr=True)
    settings = BenchSettings(
        output_dir=output, warmup=warmup, iterations=iterations, smoke=smoke, records=records
    )
    try:
        run_bench(scenario, settings, compare=compare, echo=lambda line: err.print(line))
    except SluicewayError as error:
        raise _fail(error, err) from None


@app.command("mock-server")
def mock_server(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0 picks a free one).")] = 8000,
    latency_seconds: Annotated[float, typer.Option(help="Fixed latency per request.")] = 0.0,
    latency_tail_seconds: Annotated[float, typer.Option(help="Mean lognormal tail.")] = 0.0,
    capacity: Annotated[int | None, typer.Option(help="Concurrent requests per model.")] = None,
    rpm: Annotated[int | None, typer.Option(help="Requests per minute per model.")] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute per model.")] = None,
    queueing: Annotated[bool, typer.Option(help="Slow down instead of answering 429.")] = False,
    retry_after_format: Annotated[
        str, typer.Option(help="Retry-After form: seconds, http-date, ms or none.")
    ] = "seconds",
    retry_after_seconds: Annotated[float, typer.Option(help="Retry-After on 429.")] = 1.0,
    error_500_rate: Annotated[float, typer.Option(help="Share answered 500.")] = 0.0,
    error_503_rate: Annotated[float, typer.Option(help="Share answered 503.")] = 0.0,
    error_529_rate: Annotated[float, typer.Option(help="Share answered 529 (overloaded).")] = 0.0,
    hang_rate: Annotated[float, typer.Option(help="Share that hangs (--hang-seconds).")] = 0.0,
    hang_seconds: Annotated[
        float | None, typer.Option(help="A hang lasts this long and keeps its slot that long.")
    ] = None,
    reset_rate: Annotated[float, typer.Option(help="Share with a connection reset.")] = 0.0,
    malformed_rate: Annotated[float, typer.Option(help="Share with a malformed body.")] = 0.0,
    api_key_env: Annotated[
        str | None, typer.Option(help="Require the key held by this environment variable.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of content and faults.")] = 0,
    count_by_content: Annotated[
        bool, typer.Option(help="Count requests per content hash in /stats.")
    ] = False,
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

    err = Console(stderr=True)
    for flag, value, kinds in (
        ("--retry-after-format", retry_after_format, RetryAfterFormat),
        ("--rate-window", rate_window, RateWindowKind),
        ("--schedule-epoch", schedule_epoch, ScheduleEpoch),
    ):
        if value not in {kind.value for kind in kinds}:
            choices = ", ".join(kind.value for kind in kinds)
            err.print(f"error: {flag} must be one of {choices}, got {value!r}")
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
            ),
            seed=seed,
            api_key=os.environ.get(api_key_env) if api_key_env else None,
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

    def ready(server: object) -> None:
        err.print(f"mock server listening on {getattr(server, 'base_url', '')}", highlight=False)

    try:
        asyncio.run(serve(settings, port=port, on_ready=ready))
    except KeyboardInterrupt:
        err.print("mock server stopped")


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
