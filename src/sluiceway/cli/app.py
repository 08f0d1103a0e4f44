"""``sluiceway`` commands: run, preview, validate."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from sluiceway.api import preview_async
from sluiceway.cli.progress import LogProgress, RichProgress
from sluiceway.config.loading import format_issues, load_config
from sluiceway.engine.progress import ProgressListener
from sluiceway.engine.run import RunOptions, run_dataset
from sluiceway.errors import ConfigError, SluicewayError

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
) -> None:
    """Generate the dataset and write one Parquet file per row group plus a manifest."""
    err = Console(stderr=True)
    try:
        cfg = load_config(config)
        updates = {}
        if num_records is not None:
            updates["num_records"] = num_records
        if seed is not None:
            updates["seed"] = seed
        if updates:
            cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update=updates)})
        output_dir = output or Path(cfg.output.path)
        progress: ProgressListener | None = None
        if not quiet:
            progress = RichProgress(err) if err.is_terminal else LogProgress()
        outcome = asyncio.run(
            run_dataset(
                cfg,
                RunOptions(
                    output_dir=output_dir,
                    overwrite=overwrite or cfg.output.overwrite,
                    progress=progress,
                ),
            )
        )
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
