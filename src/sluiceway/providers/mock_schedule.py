"""Limits of the mock server that change over time: a schedule of values per model and limit.

A :class:`LimitSchedule` puts a value of one limit (capacity, RPM or TPM) in force at given
seconds after the *schedule epoch*: the moment the server starts serving, or its first model
request (:class:`ScheduleEpoch`), or whenever ``POST /mock/epoch`` resets it. Before its first
step a limit has the server's configured value. The text form, used by the command line, is
``[MODEL=]SECONDS:VALUE,SECONDS:VALUE,...`` with ``none`` for unlimited, e.g.
``0:32,10:8,20:32`` (capacity 32, 8 from 10 s to 20 s, then 32 again, for every model).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from sluiceway.errors import ConfigError, ConfigIssue
from sluiceway.providers.behaviour import EndpointLimit


class ScheduleEpoch(enum.Enum):
    """When second 0 of the schedules and competing loads is (``POST /mock/epoch`` resets it)."""

    START = "start"  # the server starts listening
    FIRST_REQUEST = "first-request"  # the first model request arrives (before it is admitted)


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleStep:
    """From ``at_seconds`` after the epoch, the limit is ``value`` (``None``: unlimited)."""

    at_seconds: float
    value: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitSchedule:
    """Values of one limit over time, for one model id (``model=None``: every model without a
    schedule of its own for that limit). Steps are in increasing time order."""

    limit: EndpointLimit
    steps: tuple[ScheduleStep, ...]
    model: str | None = None

    def __post_init__(self) -> None:
        where = f"{self.limit.value} schedule" + (f" of model {self.model!r}" if self.model else "")
        problems: list[str] = []
        if not self.steps:
            problems.append("has no steps")
        previous = -math.inf
        for step in self.steps:
            if not (math.isfinite(step.at_seconds) and step.at_seconds >= 0.0):
                problems.append(f"step time {step.at_seconds} must be finite and >= 0")
            elif step.at_seconds <= previous:
                problems.append(f"step times must increase, got {step.at_seconds} after {previous}")
            previous = step.at_seconds
            if step.value is not None and step.value < 1:
                problems.append(f"value {step.value} at {step.at_seconds} s must be >= 1 or none")
        if self.model == "":
            problems.append("names an empty model id")
        if problems:
            raise ConfigError(
                [
                    ConfigIssue(
                        path=f"mock server {where}",
                        message=problem,
                        hint="write steps as SECONDS:VALUE in increasing time, e.g. 0:32,10:8",
                    )
                    for problem in problems
                ]
            )

    def describe(self) -> dict[str, object]:
        """The schedule as JSON-ready data (``/stats``)."""
        return {
            "model": self.model,
            "limit": self.limit.value,
            "steps": [[step.at_seconds, step.value] for step in self.steps],
        }


def parse_limit_schedule(text: str, limit: EndpointLimit, *, source: str) -> LimitSchedule:
    """Read ``[MODEL=]SECONDS:VALUE,...`` (``none`` for unlimited) for ``limit``; ``source``
    names where the text came from (a flag) in the :class:`ConfigError` it raises."""
    model: str | None = None
    body = text.strip()
    if "=" in body:
        model, _, body = body.partition("=")
        model = model.strip()
    steps: list[ScheduleStep] = []
    for part in body.split(","):
        at, sep, value = part.strip().partition(":")
        try:
            if not sep:
                raise ValueError(part)
            steps.append(
                ScheduleStep(
                    at_seconds=float(at),
                    value=None if value.strip().lower() == "none" else int(value),
                )
            )
        except ValueError:
            raise ConfigError(
                [
                    ConfigIssue(
                        path=source,
                        message=f"{part.strip()!r} in {text!r} is not SECONDS:VALUE",
                        hint="write e.g. '0:32,10:8,20:32' or 'my-model=0:32,10:8' "
                        "(VALUE an integer >= 1 or none)",
                    )
                ]
            ) from None
    return LimitSchedule(limit=limit, steps=tuple(steps), model=model)
