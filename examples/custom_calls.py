"""Custom column functions for ``examples/custom_calls.yaml``.

``follow_up_questions`` makes a variable number of model calls per row: none for short answers,
one for medium ones, and one per paragraph otherwise. Every call takes its own request lease.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sluiceway.columns.base import GenerationContext


async def follow_up_questions(row: Mapping[str, Any], ctx: GenerationContext) -> dict[str, Any]:
    depth = int(row["depth"])
    questions = []
    for step in range(depth):
        questions.append(
            await ctx.models.generate_text(
                "asker",
                f"Ask follow-up question {step + 1} about: {row['topic']}",
            )
        )
    return {"follow_ups": questions, "follow_up_count": len(questions)}


def word_count(row: Mapping[str, Any], ctx: GenerationContext) -> int:
    """A synchronous custom column that makes no model call."""
    return len(str(row["answer"]).split())
