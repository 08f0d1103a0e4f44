"""Shared builders for whole-engine tests against the embedded simulated provider."""

from __future__ import annotations

from typing import Any


def base_config(num_records: int = 12, buffer_size: int = 5, **run: Any) -> dict[str, Any]:
    return {
        "providers": [{"name": "sim", "type": "simulated"}],
        "models": [
            {
                "alias": "writer",
                "provider": "sim",
                "model": "sim-writer",
                "max_parallel_requests": 4,
            },
            {"alias": "judge", "provider": "sim", "model": "sim-judge", "max_parallel_requests": 2},
        ],
        "columns": [
            {
                "name": "topic",
                "type": "sampler",
                "sampler": {"kind": "category", "values": ["a", "b", "c"], "weights": [1, 2, 3]},
            },
            {"name": "n", "type": "sampler", "sampler": {"kind": "integer", "low": 0, "high": 3}},
            {
                "name": "who",
                "type": "sampler",
                "sampler": {"kind": "person", "field": "first_name"},
            },
            {"name": "title", "type": "expression", "template": "{{ who }} on {{ topic }}"},
            {"name": "text", "type": "llm_text", "model": "writer", "prompt": "Write {{ title }}"},
            {
                "name": "facts",
                "type": "llm_structured",
                "model": "writer",
                "prompt": "Facts of {{ text }}",
                "output_schema": {
                    "type": "object",
                    "properties": {"tone": {"type": "string", "enum": ["warm", "cold"]}},
                    "required": ["tone"],
                    "additionalProperties": False,
                },
            },
            {
                "name": "score",
                "type": "llm_judge",
                "model": "judge",
                "prompt": "Judge {{ text }}",
                "rubrics": [{"name": "clarity", "description": "Is it clear?"}],
            },
            {"name": "vec", "type": "embedding", "model": "writer", "input": "{{ text }}"},
        ],
        "run": {"num_records": num_records, "seed": 11, "buffer_size": buffer_size, **run},
    }
