"""Whole runs store structured and judge answers as Parquet structs and lists that pyarrow, pandas
(and polars and DuckDB, where installed) read field by field; a schema that maps to no Arrow type
is JSON text, and the manifest says which. Every file has the same schema: row groups whose
rows were all skipped, and files written by a resumed run. A pydantic output model reads rows
back as instances of it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from pydantic import BaseModel

from sluiceway import generate_async
from sluiceway.config import DatasetBuilder, parse_config
from sluiceway.config.models import DatasetConfig
from sluiceway.engine.run import RunOptions, run_dataset
from sluiceway.storage.dataset import load_dataset, read_manifest

RUBRIC = pa.struct(
    [
        pa.field("score", pa.int64(), nullable=False),
        pa.field("reasoning", pa.string(), nullable=False),
    ]
)
FACTS = pa.struct(
    [
        pa.field("sentiment", pa.string(), nullable=False),
        pa.field("features", pa.list_(pa.string()), nullable=False),
        pa.field("stars", pa.int64(), nullable=True),
    ]
)


def _config(out: Path) -> DatasetConfig:
    return parse_config(
        {
            "providers": [{"name": "sim", "type": "simulated"}],
            "models": [{"alias": "w", "provider": "sim", "model": "sim-w"}],
            "columns": [
                {
                    "name": "topic",
                    "type": "sampler",
                    "sampler": {"kind": "category", "values": ["tea", "coffee"]},
                },
                {
                    "name": "status",
                    "type": "expression",
                    "template": "made",
                    "skip_when": "topic == 'tea'",
                    "skip_value": "skipped",
                },
                {
                    "name": "facts",
                    "type": "llm_structured",
                    "model": "w",
                    "prompt": "Facts about {{ topic }}",
                    "skip_when": "topic == 'tea'",
                    "output_schema": {
                        "type": "object",
                        "properties": {
                            "sentiment": {"type": "string", "enum": ["warm", "cold"]},
                            "features": {"type": "array", "items": {"type": "string"}},
                            "stars": {"type": "integer", "minimum": 1, "maximum": 5},
                        },
                        "required": ["sentiment", "features"],
                        "additionalProperties": False,
                    },
                },
                {
                    "name": "free",
                    "type": "llm_structured",
                    "model": "w",
                    "prompt": "Anything about {{ topic }}",
                    "output_schema": {"type": "object"},
                },
                {
                    "name": "quality",
                    "type": "llm_judge",
                    "model": "w",
                    "prompt": "Rate {{ topic }}",
                    "rubrics": [
                        {"name": "clarity", "description": "Is it clear?"},
                        {"name": "depth", "description": "Is it deep?"},
                    ],
                },
            ],
            "run": {"num_records": 10, "seed": 4, "buffer_size": 1},
            "output": {"path": str(out)},
        }
    )


def _parts(out: Path) -> list[Path]:
    return sorted(out.glob("part-*.parquet"))


async def _run(out: Path, **options: Any) -> None:
    await run_dataset(_config(out), RunOptions(output_dir=out, **options))


async def test_structured_and_judge_columns_are_structs_every_reader_sees(tmp_path: Path) -> None:
    out = tmp_path / "out"
    await _run(out)
    parts = _parts(out)
    assert len(parts) == 10

    schemas = {pq.read_schema(path) for path in parts}
    assert len(schemas) == 1, "the files of one dataset have different schemas"
    (schema,) = schemas
    assert schema.field("facts").type == FACTS
    assert schema.field("quality").type == pa.struct(
        [pa.field("clarity", RUBRIC, nullable=False), pa.field("depth", RUBRIC, nullable=False)]
    )
    assert schema.field("free").type == pa.string()  # a free-form object: JSON text
    assert schema.field("status").type == pa.string()
    assert read_manifest(out).column_kinds == {
        "topic": "string",
        "status": "string",
        "facts": "nested",
        "free": "json",
        "quality": "nested",
    }
    manifest_text = json.loads((out / "manifest.json").read_text())
    assert manifest_text["column_kinds"]["facts"] == "nested"

    table = pq.read_table(parts)
    topics = table.column("topic").to_pylist()
    assert set(topics) == {"tea", "coffee"}  # so some row groups are wholly skipped
    sentiments = pc.struct_field(table.column("facts"), [0]).to_pylist()
    scores = pc.struct_field(table.column("quality"), [0, 0]).to_pylist()
    for topic, sentiment, score in zip(topics, sentiments, scores, strict=True):
        assert (sentiment is None) == (topic == "tea")
        assert sentiment is None or sentiment in {"warm", "cold"}
        assert isinstance(score, int) and 1 <= score <= 5

    frame = pd.read_parquet(parts)
    coffee = frame[frame["topic"] == "coffee"].iloc[0]
    assert coffee["facts"]["sentiment"] in {"warm", "cold"}
    assert 1 <= coffee["quality"]["depth"]["score"] <= 5
    assert frame["status"].isin(["made", "skipped"]).all()

    loaded = load_dataset(out)
    facts = [value for value in loaded["facts"] if value is not None]
    assert facts and all(set(value) == {"sentiment", "features", "stars"} for value in facts)
    assert all(isinstance(value, dict) for value in loaded["free"])
    assert loaded["status"].tolist() == [
        "skipped" if topic == "tea" else "made" for topic in loaded["topic"]
    ]


async def test_files_written_after_a_resume_share_the_schema(tmp_path: Path) -> None:
    out = tmp_path / "out"
    await _run(out)
    before = {path.name: pq.read_schema(path) for path in _parts(out)}
    (out / "part-000003.parquet").unlink()
    (out / "part-000006.parquet").unlink()

    await _run(out, resume=True)

    after = {path.name: pq.read_schema(path) for path in _parts(out)}
    assert after == before
    assert len(set(after.values())) == 1


async def test_polars_reads_the_fields(tmp_path: Path) -> None:
    polars = pytest.importorskip("polars")
    out = tmp_path / "out"
    await _run(out)
    frame = polars.read_parquet(str(out / "part-*.parquet"))
    scores = frame.select(polars.col("quality").struct.field("clarity").struct.field("score"))
    assert scores.height == 10


async def test_duckdb_reads_the_fields(tmp_path: Path) -> None:
    duckdb = pytest.importorskip("duckdb")
    out = tmp_path / "out"
    await _run(out)
    rows = duckdb.sql(
        f"SELECT quality.clarity.score FROM read_parquet('{out}/part-*.parquet')"
    ).fetchall()
    assert len(rows) == 10


class Place(BaseModel):
    city: str
    country: str | None = None


class Review(BaseModel):
    tone: Literal["warm", "cold"]
    stars: int = 3
    places: list[Place] = []


async def test_a_pydantic_output_model_reads_rows_back_as_instances(tmp_path: Path) -> None:
    out = tmp_path / "out"
    config = (
        DatasetBuilder(num_records=6, seed=2, buffer_size=3)
        .add_provider(name="sim", type="simulated")
        .add_model(alias="w", provider="sim", model="sim-w")
        .sampler("topic", {"kind": "category", "values": ["tea", "coffee"]})
        .llm_structured("review", model="w", prompt="Review {{ topic }}", output_schema=Review)
        .output(str(out))
        .build()
    )

    await generate_async(config)

    schema = pq.read_schema(_parts(out)[0])
    assert pa.types.is_struct(schema.field("review").type)
    reviews = load_dataset(out, output_models={"review": Review})["review"].tolist()
    assert len(reviews) == 6
    assert all(isinstance(review, Review) for review in reviews)
