"""Build a config in Python with the same classes as YAML, run it, and read the DataFrame.

.venv/bin/python examples/python_api.py
"""

from __future__ import annotations

from pydantic import BaseModel

from sluiceway.api import generate
from sluiceway.config.models import (
    CategorySampler,
    DatasetConfig,
    LLMStructuredColumnConfig,
    LLMTextColumnConfig,
    ModelConfig,
    ProviderConfig,
    RunConfig,
    SamplerColumnConfig,
)


class Summary(BaseModel):
    """The structured output: a pydantic model is accepted as an output schema."""

    headline: str
    keywords: list[str]


def build_config() -> DatasetConfig:
    return DatasetConfig(
        providers=[ProviderConfig(name="sim", type="simulated")],
        models=[ModelConfig(alias="writer", provider="sim", model="sim-writer-1")],
        columns=[
            SamplerColumnConfig(
                name="city",
                type="sampler",
                sampler=CategorySampler(kind="category", values=["Lyon", "Porto", "Gdansk"]),
            ),
            LLMTextColumnConfig(
                name="postcard",
                type="llm_text",
                model="writer",
                prompt="Write a postcard from {{ city }}.",
            ),
            LLMStructuredColumnConfig(
                name="summary",
                type="llm_structured",
                model="writer",
                prompt="Summarise: {{ postcard }}",
                output_schema=Summary,
            ),
        ],
        run=RunConfig(num_records=20, seed=1, buffer_size=10),
    )


if __name__ == "__main__":
    result = generate(build_config(), output="out/python_api", overwrite=True)
    print(result.dataframe.head())
    print(f"{result.info.rows_written} rows in {result.info.wall_seconds:.2f} s")
