"""The base event classes: what every event carries, and the two stream bases.

Every event is a frozen slotted dataclass with ``captured_at`` (``time.monotonic()`` seconds,
the clock of the default asyncio loop), the correlation of the task running when it was built
(``sluiceway.context.current_task``, ``None`` outside any task) and a per-stream ``sequence``
that the :class:`~sluiceway.observability.bus.EventBus` stamps once, when it delivers the event.

Every event class is also decorated with :func:`sluiceway.values.fast_init`, which replaces
the frozen dataclass ``__init__`` by one that stores the fields through their slots (about a
third cheaper; the instances are the same, still frozen).

Events carry ids, counts, durations and closed reason codes only: never prompts, completions,
row values, exception messages or credentials.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import ClassVar

from sluiceway.context import TaskCorrelation, current_task
from sluiceway.observability.codes import RequestDomainCode
from sluiceway.observability.kinds import EventKind, EventStream
from sluiceway.values import fast_init

UNSEQUENCED = -1
"""``sequence`` of an event no bus has delivered yet."""


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of every event. Subclasses set the class attributes ``kind`` and ``stream``."""

    kind: ClassVar[EventKind]
    stream: ClassVar[EventStream]

    captured_at: float = field(default_factory=time.monotonic)
    correlation: TaskCorrelation | None = field(default_factory=current_task.get)
    sequence: int = UNSEQUENCED


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulerEvent(Event):
    """An event of the scheduler admission stream."""

    stream: ClassVar[EventStream] = EventStream.SCHEDULER


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class TaskEvent(SchedulerEvent):
    """A scheduler event about one task attempt. The dispatch loop runs outside any task, so
    these name the task explicitly; ``(task_id, attempt)`` identifies one attempt."""

    task_id: str
    column: str
    row_group: int
    group: str
    attempt: int = 1


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class RequestEvent(Event):
    """An event of the request admission stream about one provider/model and domain.

    ``model`` is the raw model id: a trace field, never a metric label."""

    stream: ClassVar[EventStream] = EventStream.REQUEST

    provider: str
    model: str
    domain: RequestDomainCode


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptEvent(RequestEvent):
    """A request event about one attempt (``attempt_id`` is unique within a run)."""

    attempt_id: int


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseEvent(AttemptEvent):
    """A request event about one attempt that holds a request lease."""

    lease_id: int
