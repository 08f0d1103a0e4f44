"""Bottleneck attribution: which layer held each column's and each model's work, over time.

Method (also in ``docs/observability.md``). Every complete task attempt is cut into consecutive
phases, each charged to one layer:

==========================  =====================================================================
layer                       interval of one task attempt
==========================  =====================================================================
dependency readiness        row group admitted (first attempt) -> dependency ready
ready queue                 dependency ready -> selected
task admission              selected -> worker spawned (lease, commit, spawn)
request admission           inside the run: a request attempt waits for a request lease
cooldown                    inside the run: that wait overlaps a cooldown of its provider/model
                            and domain, or the task backs off after a rate-limited attempt
provider execution          inside the run: a request attempt is at the provider (model start ->
                            model end), or the task backs off after a failed attempt
generator                   the rest of the run: generator code between model calls, and task
                            completion -> task lease release
==========================  =====================================================================

Inside the run, concurrent requests (custom columns making calls from child tasks) overlap; each
instant goes to the highest of provider execution > cooldown > request admission > generator.
A column's share of a layer is the layer's seconds summed over the column's task attempts,
divided by all their seconds: the wall time of the run, each instant split among layers in
proportion to how many of the column's outstanding task attempts sat in each. Shares sum to
100%. Per model, a task attempt's request phases go to the model of the request; its other
phases are split equally among the models it called; attempts that called no model are not in
the per-model table.

With trace sampling (``observability.sampling``) the timelines are those of the traced task
attempts, a sample drawn independently of timing, so the shares estimate those of the whole
run; the attempt counts and seconds are the sample's. Cooldown windows come from every
``request_rate_limited`` event (always recorded), passed as ``cooldown_requests``, so an
untraced attempt's rate limit still cools down the traced attempts waiting beside it.
"""

from __future__ import annotations

import bisect
import enum
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from sluiceway.observability.codes import RequestOutcomeCode
from sluiceway.observability.timeline import RequestTimeline, TaskTimeline


class Layer(enum.StrEnum):
    """The layers time is charged to, in pipeline order."""

    DEPENDENCY_READINESS = "dependency_readiness"
    READY_QUEUE = "ready_queue"
    TASK_ADMISSION = "task_admission"
    REQUEST_ADMISSION = "request_admission"
    COOLDOWN = "cooldown"
    PROVIDER_EXECUTION = "provider_execution"
    GENERATOR = "generator"

    @property
    def heading(self) -> str:
        return _TITLES[self]


_TITLES: Mapping[Layer, str] = MappingProxyType(
    {
        Layer.DEPENDENCY_READINESS: "dependency readiness",
        Layer.READY_QUEUE: "ready queue",
        Layer.TASK_ADMISSION: "task admission",
        Layer.REQUEST_ADMISSION: "request admission",
        Layer.COOLDOWN: "cooldown",
        Layer.PROVIDER_EXECUTION: "provider execution",
        Layer.GENERATOR: "generator",
    }
)

# Inside a task run, an instant covered by several intervals goes to the highest of these.
_PRIORITY: Mapping[Layer, int] = MappingProxyType(
    {
        Layer.PROVIDER_EXECUTION: 3,
        Layer.COOLDOWN: 2,
        Layer.REQUEST_ADMISSION: 1,
    }
)

ResourceKey = tuple[str, str, str]


def model_label(provider: str, model: str) -> str:
    return f"{provider}/{model}"


@dataclass(frozen=True, slots=True, kw_only=True)
class AttributionRow:
    """Seconds per layer for one column or model; ``attempts`` task attempts contributed."""

    name: str
    attempts: int
    seconds_by_layer: Mapping[Layer, float]

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds_by_layer.values())

    def share(self, layer: Layer) -> float:
        """The layer's share in [0, 1]; 0 for a row with no time."""
        total = self.total_seconds
        return self.seconds_by_layer.get(layer, 0.0) / total if total > 0 else 0.0

    @property
    def limiting_layer(self) -> Layer | None:
        """The layer with the largest share (earliest in pipeline order on a tie)."""
        if self.total_seconds <= 0:
            return None
        return max(Layer, key=lambda layer: (self.seconds_by_layer.get(layer, 0.0), -_ORDER[layer]))


_ORDER: Mapping[Layer, int] = MappingProxyType({layer: i for i, layer in enumerate(Layer)})


@dataclass(frozen=True, slots=True, kw_only=True)
class Attribution:
    """Per-column and per-model rows, plus an ``overall`` row over every complete attempt.
    ``incomplete_attempts`` counts task attempts left out for missing timestamps."""

    overall: AttributionRow
    by_column: tuple[AttributionRow, ...]
    by_model: tuple[AttributionRow, ...]
    incomplete_attempts: int = 0
    layers: tuple[Layer, ...] = field(default=tuple(Layer))


class _Accumulator:
    __slots__ = ("attempts", "seconds")

    def __init__(self) -> None:
        self.attempts = 0
        self.seconds = dict.fromkeys(Layer, 0.0)

    def row(self, name: str) -> AttributionRow:
        return AttributionRow(
            name=name, attempts=self.attempts, seconds_by_layer=MappingProxyType(self.seconds)
        )


class CooldownWindows:
    """Merged cooldown intervals per provider/model and domain, from rate-limited attempts."""

    def __init__(self, requests: Iterable[RequestTimeline]) -> None:
        raw: dict[ResourceKey, list[tuple[float, float]]] = {}
        for request in requests:
            if request.rate_limited_at is None or not request.cooldown_seconds:
                continue
            start = request.rate_limited_at
            raw.setdefault(_resource(request), []).append((start, start + request.cooldown_seconds))
        self._starts: dict[ResourceKey, list[float]] = {}
        self._ends: dict[ResourceKey, list[float]] = {}
        for key, windows in raw.items():
            merged: list[list[float]] = []
            for start, end in sorted(windows):
                if merged and start <= merged[-1][1]:
                    merged[-1][1] = max(merged[-1][1], end)
                else:
                    merged.append([start, end])
            self._starts[key] = [window[0] for window in merged]
            self._ends[key] = [window[1] for window in merged]

    def overlaps(self, key: ResourceKey, start: float, end: float) -> list[tuple[float, float]]:
        """The parts of [start, end] inside a cooldown of ``key``."""
        starts = self._starts.get(key)
        if not starts:
            return []
        ends = self._ends[key]
        found = []
        index = bisect.bisect_right(ends, start)
        while index < len(starts) and starts[index] < end:
            low, high = max(start, starts[index]), min(end, ends[index])
            if high > low:
                found.append((low, high))
            index += 1
        return found


def _first_known(*times: float | None) -> float | None:
    for at in times:
        if at is not None:
            return at
    return None


def _resource(request: RequestTimeline) -> ResourceKey:
    return (request.provider, request.model, request.domain.value)


_Interval = tuple[float, float, Layer, str]


def _run_intervals(task: TaskTimeline, cooldowns: CooldownWindows) -> list[_Interval]:
    """Labelled intervals inside a task run: waits, cooldowns, provider time, backoffs."""
    intervals: list[_Interval] = []
    by_resource: dict[ResourceKey, list[RequestTimeline]] = {}
    for request in task.requests:
        label = model_label(request.provider, request.model)
        key = _resource(request)
        by_resource.setdefault(key, []).append(request)
        if request.wait_started_at is not None and request.wait_ended_at is not None:
            start, end = request.wait_started_at, request.wait_ended_at
            intervals.append((start, end, Layer.REQUEST_ADMISSION, label))
            for low, high in cooldowns.overlaps(key, start, end):
                intervals.append((low, high, Layer.COOLDOWN, label))
        started = request.model_started_at
        ended = _first_known(request.model_completed_at, request.lease_released_at)
        if started is not None and ended is not None:
            intervals.append((started, ended, Layer.PROVIDER_EXECUTION, label))
    # Backoff between a failed attempt and the next attempt on the same resource.
    for key, attempts in by_resource.items():
        attempts.sort(key=lambda r: _first_known(r.wait_started_at, r.model_started_at) or 0.0)
        for failed, following in itertools.pairwise(attempts):
            if failed.outcome in (None, RequestOutcomeCode.SUCCESS):
                continue
            end_of_failed = _first_known(failed.lease_released_at, failed.model_completed_at)
            next_start = _first_known(following.wait_started_at, following.model_started_at)
            if end_of_failed is None or next_start is None or next_start <= end_of_failed:
                continue
            layer = (
                Layer.COOLDOWN
                if failed.outcome is RequestOutcomeCode.RATE_LIMITED
                else Layer.PROVIDER_EXECUTION
            )
            intervals.append((end_of_failed, next_start, layer, model_label(key[0], key[1])))
    return intervals


def _split_run(
    start: float, end: float, intervals: Sequence[_Interval], models: Sequence[str]
) -> list[tuple[float, Layer, tuple[str, ...]]]:
    """Seconds of [start, end] per winning layer, with the models each piece is charged to."""
    clipped = [
        (max(s, start), min(e, end), layer, label)
        for s, e, layer, label in intervals
        if min(e, end) > max(s, start)
    ]
    if not clipped:
        return [(end - start, Layer.GENERATOR, tuple(models))] if end > start else []
    points = sorted({start, end, *(s for s, *_ in clipped), *(e for _, e, *_ in clipped)})
    pieces = []
    for low, high in itertools.pairwise(points):
        best: Layer | None = None
        labels: set[str] = set()
        for s, e, layer, label in clipped:
            if s <= low and e >= high:
                if best is None or _PRIORITY[layer] > _PRIORITY[best]:
                    best, labels = layer, {label}
                elif layer is best:
                    labels.add(label)
        if best is None:
            pieces.append((high - low, Layer.GENERATOR, tuple(models)))
        else:
            pieces.append((high - low, best, tuple(sorted(labels))))
    return pieces


def attribute(
    timelines: Iterable[TaskTimeline],
    *,
    cooldown_requests: Iterable[RequestTimeline] = (),
) -> Attribution:
    """The attribution of the given task attempts (see the module docstring for the method).

    Cooldown windows come from the requests of ``timelines`` and from ``cooldown_requests``
    (request attempts outside them: ``CorrelatedRuntimeView.unattributed_requests()``, which
    with trace sampling holds the rate limits of untraced attempts)."""
    timelines = list(timelines)
    cooldowns = CooldownWindows(
        itertools.chain((r for t in timelines for r in t.requests), cooldown_requests)
    )
    overall = _Accumulator()
    columns: dict[str, _Accumulator] = {}
    models: dict[str, _Accumulator] = {}
    incomplete = 0
    for task in timelines:
        ready, selected = task.dependency_ready_at, task.selected_at
        spawned, released = task.spawned_at, task.lease_released_at
        if ready is None or selected is None or spawned is None or released is None:
            incomplete += 1
            continue
        start = ready
        if task.attempt == 1 and task.row_group_admitted_at is not None:
            start = min(ready, task.row_group_admitted_at)
        pieces: list[tuple[float, Layer, tuple[str, ...]]] = []
        task_models = sorted({model_label(r.provider, r.model) for r in task.requests})
        for low, high, layer in (
            (start, ready, Layer.DEPENDENCY_READINESS),
            (ready, selected, Layer.READY_QUEUE),
            (selected, spawned, Layer.TASK_ADMISSION),
        ):
            if high > low:
                pieces.append((high - low, layer, tuple(task_models)))
        pieces.extend(_split_run(spawned, released, _run_intervals(task, cooldowns), task_models))
        column = columns.setdefault(task.column, _Accumulator())
        column.attempts += 1
        overall.attempts += 1
        for model in task_models:
            models.setdefault(model, _Accumulator()).attempts += 1
        for seconds, layer, charged in pieces:
            column.seconds[layer] += seconds
            overall.seconds[layer] += seconds
            for model in charged:
                models[model].seconds[layer] += seconds / len(charged)
    return Attribution(
        overall=overall.row("all columns"),
        by_column=tuple(columns[name].row(name) for name in sorted(columns)),
        by_model=tuple(models[name].row(name) for name in sorted(models)),
        incomplete_attempts=incomplete,
    )
