"""The benchmark scenarios of SPEC §10 as small declarative definitions.

A scenario is a config builder (records, mock-server URL -> config document), the physical limit
its throughput is measured against (``sum`` over models of ``capacity / latency``, as calls per
second; ``None`` when the engine itself is the limit) and the target of SPEC §12 it checks.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sluiceway.bench.worker import WORKER_MODULE

ConfigDocument = dict[str, Any]


class Transport(enum.StrEnum):
    """Where the model calls go: the in-process simulated provider or the loopback mock server."""

    SIMULATED = "simulated"
    MOCK_SERVER = "mock_server"


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    """One simulated model endpoint: true latency and capacity, and the client's static cap."""

    alias: str
    latency_seconds: float = 0.0
    capacity: int | None = None  # requests the endpoint serves at once; None = unbounded
    client_cap: int = 256  # max_parallel_requests
    retry_after_seconds: float = 1.0
    # More `sluiceway mock-server` flags when the mock server serves it (schedules, competitors).
    mock_flags: tuple[str, ...] = ()
    timeout_seconds: float | None = None  # the model's timeout_seconds (None: the default)

    @property
    def limit_per_second(self) -> float | None:
        """``capacity / latency`` (None when unbounded or zero latency)."""
        served = min(self.client_cap, self.capacity or self.client_cap)
        return served / self.latency_seconds if self.latency_seconds > 0 else None


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    """A named benchmark: how to build its config and what its figures are measured against."""

    name: str
    summary: str
    build: Callable[[int, str | None], ConfigDocument]  # (records, mock base URL) -> config
    records: int
    smoke_records: int
    primary_metric: str
    physical_limit_per_second: float | None = None  # model calls/s the endpoints allow
    limit_note: str = ""
    target: str = ""
    transport: Transport = Transport.SIMULATED
    mock_endpoint: Endpoint | None = None  # served by the mock server (one per scenario)
    journal: bool = True
    process_per_iteration: bool = False  # a fresh process per iteration (peak RSS)
    event_kinds: tuple[str, ...] = ()
    analysis: Mapping[str, Any] = field(default_factory=dict)
    smoke_analysis: Mapping[str, Any] | None = None
    ratio_metrics: tuple[str, ...] = ("utilization",)  # derived: metric / physical limit
    summary_metrics: tuple[str, ...] = ()  # shown in summary.md beside the primary metric


def _simulated_provider(name: str, endpoint: Endpoint) -> dict[str, Any]:
    simulation: dict[str, Any] = {
        "latency_seconds": endpoint.latency_seconds,
        "retry_after_seconds": endpoint.retry_after_seconds,
    }
    if endpoint.capacity is not None:
        simulation["capacity"] = endpoint.capacity
    return {"name": name, "type": "simulated", "simulation": simulation}


def _model(alias: str, provider: str, endpoint: Endpoint) -> dict[str, Any]:
    model: dict[str, Any] = {
        "alias": alias,
        "provider": provider,
        "model": f"bench-{alias}",
        "max_parallel_requests": endpoint.client_cap,
    }
    if endpoint.timeout_seconds is not None:
        model["timeout_seconds"] = endpoint.timeout_seconds
    return model


def _document(
    endpoints: Mapping[str, Endpoint],
    columns: list[dict[str, Any]],
    records: int,
    *,
    base_url: str | None = None,
    buffer_size: int = 100,
    run: Mapping[str, Any] | None = None,
) -> ConfigDocument:
    """One provider per endpoint (so capacities are independent), or the mock server for all."""
    if base_url is None:
        providers = [_simulated_provider(f"p-{alias}", ep) for alias, ep in endpoints.items()]
        models = [_model(alias, f"p-{alias}", ep) for alias, ep in endpoints.items()]
    else:
        providers = [{"name": "mock", "type": "openai", "base_url": base_url}]
        models = [_model(alias, "mock", ep) for alias, ep in endpoints.items()]
    return {
        "providers": providers,
        "models": models,
        "columns": columns,
        "run": {
            "num_records": records,
            "seed": 7,
            "buffer_size": buffer_size,
            "max_concurrent_row_groups": 4,
            **(run or {}),
        },
    }


TOPIC: dict[str, Any] = {
    "name": "topic",
    "type": "sampler",
    "sampler": {"kind": "category", "values": ["tides", "locks", "canals", "weirs"]},
}


def _chain(model: str) -> list[dict[str, Any]]:
    return [
        TOPIC,
        {"name": "draft", "type": "llm_text", "model": model, "prompt": "Write on {{ topic }}"},
        {"name": "summary", "type": "llm_text", "model": model, "prompt": "Shorten: {{ draft }}"},
        {"name": "title", "type": "llm_text", "model": model, "prompt": "Title: {{ summary }}"},
    ]


ZERO = Endpoint(alias="m", client_cap=256)
# Latency-bound endpoints answer in 200 ms, an LLM-like latency at which the event loop's timer
# overshoot (a few tenths of a millisecond per wait here) stays a small share of each request.
LATENCY = Endpoint(alias="m", latency_seconds=0.2, capacity=32, client_cap=32)
MOCK_LATENCY = Endpoint(alias="m", latency_seconds=0.2, capacity=32, client_cap=32)
WIDE = tuple(
    Endpoint(alias=f"w{i}", latency_seconds=0.2, capacity=8, client_cap=8) for i in range(4)
)
GENERATE = Endpoint(alias="gen", latency_seconds=0.2, capacity=16, client_cap=16)
JUDGE = Endpoint(alias="judge", latency_seconds=0.2, capacity=16, client_cap=16)
DYNAMIC = Endpoint(alias="dyn", latency_seconds=0.2, capacity=32, client_cap=32)
# True capacity 32 at 200 ms = 160 calls/s; the client starts at twice that.
RATE_LIMITED = Endpoint(
    alias="m", latency_seconds=0.2, capacity=32, client_cap=64, retry_after_seconds=1.0
)
# SPEC §6.6, against the mock server (second 0 of its schedules and competitors is the run's
# first request): another client holds 24 of the 32 slots for the first 10 s; the capacity drops
# to 8 from 10 s to 20 s; a 2x over-subscription without Retry-After; a window of 600 requests
# per 10 s (a token bucket, refilled continuously as providers describe theirs) that only the
# provider's rate-limit headers tell the client about.
CONTENDED = Endpoint(
    alias="m",
    latency_seconds=0.2,
    capacity=32,
    client_cap=32,
    mock_flags=("--competitor", "start=0,duration=10,slots=24,mode=polite"),
)
CONTENDED_AT_ONCE = Endpoint(
    alias="m",
    latency_seconds=0.2,
    capacity=32,
    client_cap=32,
    mock_flags=("--competitor", "start=0,duration=10,slots=24,mode=retry-at-once"),
)
DROPPING = Endpoint(
    alias="m",
    latency_seconds=0.2,
    capacity=32,
    client_cap=32,
    mock_flags=("--capacity-schedule", "0:32,10:8,20:32"),
)
NO_RETRY_AFTER = Endpoint(
    alias="m",
    latency_seconds=0.2,
    capacity=32,
    client_cap=64,
    mock_flags=("--retry-after-format", "none"),
)
WINDOW_REQUESTS = 600
WINDOW_SECONDS = 10.0
WINDOWED = Endpoint(
    alias="m",
    latency_seconds=0.2,
    capacity=None,
    client_cap=32,
    mock_flags=(
        "--rpm",
        str(WINDOW_REQUESTS),
        "--tpm",
        "2000000",
        "--rate-window",
        "bucket",
        "--window-seconds",
        str(WINDOW_SECONDS),
    ),
)
# Stragglers: 2% HTTP 500 (after the latency), 1% connection resets, 0.5% of requests hanging
# 8 s while keeping their server slot (even after the client gives up), timeout_seconds 5.
FAULTY = Endpoint(
    alias="m",
    latency_seconds=0.2,
    capacity=32,
    client_cap=32,
    timeout_seconds=5.0,
    mock_flags=(
        "--error-500-rate",
        "0.02",
        "--reset-rate",
        "0.01",
        "--hang-rate",
        "0.005",
        "--hang-seconds",
        "8",
    ),
)
FAULT_CALLS = 3 * 2000
# The nominal limit plus the server slot-seconds the faults consume, over the capacity: hangs
# 0.005 x 6,000 x 8 s = 240 slot-s, answers of 500 0.02 x 6,000 x 0.2 s = 24 slot-s.
FAULT_ADJUSTED_SECONDS = (
    FAULT_CALLS / 160 + (0.005 * FAULT_CALLS * 8 + 0.02 * FAULT_CALLS * 0.2) / 32
)
HEAVY_ROOT = Endpoint(alias="slow", latency_seconds=0.1, capacity=16, client_cap=16)
FAST = Endpoint(alias="fast", latency_seconds=0.005, capacity=16, client_cap=16)
COOLING = Endpoint(
    alias="a", latency_seconds=0.2, capacity=8, client_cap=32, retry_after_seconds=1.0
)
BUSY = Endpoint(alias="b", latency_seconds=0.2, capacity=16, client_cap=16)

_LATENCY_NOTE = (
    "sum over models of capacity / mean latency (measured per answered request; "
    "utilization_configured uses the configured latency)"
)


def _capacities(*endpoints: Endpoint) -> dict[str, Any]:
    """The analysis that lets the worker measure each model's mean latency (its model id)."""
    return {
        "capacity_by_model": {
            f"bench-{ep.alias}": min(ep.client_cap, ep.capacity or ep.client_cap)
            for ep in endpoints
        }
    }


def _changing(*, restore_at: float, capacity: int) -> dict[str, Any]:
    """The analysis of a scenario whose server frees capacity ``restore_at`` s into the run."""
    return {
        "server_model": "bench-m",
        "restore_at_seconds": restore_at,
        "restored_capacity": capacity,
        "latency_seconds": 0.2,
    }


def _sum_limit(*endpoints: Endpoint) -> float:
    total = 0.0
    for endpoint in endpoints:
        limit = endpoint.limit_per_second
        assert limit is not None, f"{endpoint.alias} has no physical limit"
        total += limit
    return total


def _narrow(records: int, base_url: str | None) -> ConfigDocument:
    return _document({"m": ZERO}, _chain("m"), records, buffer_size=1000)


def _narrow_latency(records: int, base_url: str | None) -> ConfigDocument:
    return _document({"m": LATENCY}, _chain("m"), records)


def _narrow_mock(records: int, base_url: str | None) -> ConfigDocument:
    return _document({"m": MOCK_LATENCY}, _chain("m"), records, base_url=base_url)


def _wide(records: int, base_url: str | None) -> ConfigDocument:
    columns = [TOPIC] + [
        {"name": f"root{i}", "type": "llm_text", "model": ep.alias, "prompt": "On {{ topic }}"}
        for i, ep in enumerate(WIDE)
    ]
    return _document({ep.alias: ep for ep in WIDE}, columns, records)


def _judge(records: int, base_url: str | None) -> ConfigDocument:
    columns = [
        TOPIC,
        {"name": "answer", "type": "llm_text", "model": "gen", "prompt": "Explain {{ topic }}"},
        {
            "name": "verdict",
            "type": "llm_judge",
            "model": "judge",
            "prompt": "Rate: {{ answer }}",
            "rubrics": [{"name": "clarity", "description": "Is it clear?"}],
        },
    ]
    return _document({"gen": GENERATE, "judge": JUDGE}, columns, records)


def _dynamic(records: int, base_url: str | None) -> ConfigDocument:
    columns = [
        TOPIC,
        {"name": "calls", "type": "sampler", "sampler": {"kind": "integer", "low": 0, "high": 3}},
        {
            "name": "answers",
            "type": "custom",
            "function": f"{WORKER_MODULE}:dynamic_calls",
            "models": ["dyn"],
            "output_columns": ["answers", "answer_count"],
            "depends_on": ["topic", "calls"],
        },
    ]
    return _document({"dyn": DYNAMIC}, columns, records)


def _rate_limit(records: int, base_url: str | None) -> ConfigDocument:
    columns = [TOPIC, {"name": "text", "type": "llm_text", "model": "m", "prompt": "{{ topic }}"}]
    return _document({"m": RATE_LIMITED}, columns, records)


def _mock_chain(endpoint: Endpoint) -> Callable[[int, str | None], ConfigDocument]:
    def build(records: int, base_url: str | None) -> ConfigDocument:
        return _document({"m": endpoint}, _chain("m"), records, base_url=base_url)

    return build


def _mock_single(endpoint: Endpoint) -> Callable[[int, str | None], ConfigDocument]:
    def build(records: int, base_url: str | None) -> ConfigDocument:
        text = {"name": "text", "type": "llm_text", "model": "m", "prompt": "{{ topic }}"}
        return _document({"m": endpoint}, [TOPIC, text], records, base_url=base_url)

    return build


def _heavy_root(records: int, base_url: str | None) -> ConfigDocument:
    columns = [
        TOPIC,
        {"name": "root", "type": "llm_text", "model": "slow", "prompt": "Long: {{ topic }}"},
        {"name": "down", "type": "llm_text", "model": "fast", "prompt": "Short: {{ root }}"},
    ]
    return _document({"slow": HEAVY_ROOT, "fast": FAST}, columns, records)


def _cooldown(records: int, base_url: str | None) -> ConfigDocument:
    columns = [
        TOPIC,
        {"name": "from_a", "type": "llm_text", "model": "a", "prompt": "A: {{ topic }}"},
        {"name": "from_b", "type": "llm_text", "model": "b", "prompt": "B: {{ topic }}"},
    ]
    # A starts at its cap (no slow start), so its opening burst is refused at the level it
    # serves and cools A down: the cooldown B must not feel. (With slow start, A is refused
    # only while starting and probing, which cools nothing down.)
    run = {"request_admission": {"slow_start": False}}
    return _document({"a": COOLING, "b": BUSY}, columns, records, run=run)


def _memory(records: int, base_url: str | None) -> ConfigDocument:
    columns = [
        TOPIC,
        {"name": "n", "type": "sampler", "sampler": {"kind": "integer", "low": 1, "high": 9}},
        {"name": "title", "type": "expression", "template": "{{ n }} facts about {{ topic }}"},
        {"name": "text", "type": "llm_text", "model": "m", "prompt": "Write: {{ title }}"},
    ]
    return _document({"m": ZERO}, columns, records, buffer_size=1000)


_TASK_EVENTS = ("ready_enqueued", "task_lease_acquired", "worker_spawned")
_LATENCY_EVENTS = ("model_request_completed",)
_REQUEST_EVENTS = ("model_request_completed", "request_rate_limited")
_OVERHEAD_TARGET = ">= 10,000 model calls/s on one core (SPEC §12)"
_UTILIZATION_TARGET = ">= 98% of the physical limit (SPEC §12)"

SCENARIOS: Mapping[str, Scenario] = {
    scenario.name: scenario
    for scenario in (
        Scenario(
            name="overhead",
            summary="3-column LLM chain, zero-latency simulated model, journal on (defaults)",
            build=_narrow,
            records=10_000,
            smoke_records=300,
            primary_metric="model_calls_per_second",
            limit_note="none: the engine (one event loop, one core) is the limit",
            target=_OVERHEAD_TARGET,
        ),
        Scenario(
            name="overhead-no-journal",
            summary="as overhead, with the model-result journal off",
            build=_narrow,
            records=10_000,
            smoke_records=300,
            primary_metric="model_calls_per_second",
            limit_note="none: the engine (one event loop, one core) is the limit",
            target=_OVERHEAD_TARGET,
            journal=False,
        ),
        Scenario(
            name="narrow-chain",
            summary="3-column LLM chain on one model, 200 ms latency, capacity 32",
            build=_narrow_latency,
            records=1000,
            smoke_records=40,
            primary_metric="utilization",
            physical_limit_per_second=_sum_limit(LATENCY),
            limit_note=_LATENCY_NOTE,
            target=_UTILIZATION_TARGET,
            event_kinds=_LATENCY_EVENTS,
            analysis=_capacities(LATENCY),
        ),
        Scenario(
            name="narrow-chain-mock",
            summary="narrow-chain against the loopback mock server (200 ms, capacity 32)",
            build=_narrow_mock,
            records=2000,
            smoke_records=20,
            primary_metric="utilization",
            physical_limit_per_second=_sum_limit(MOCK_LATENCY),
            limit_note="capacity / configured latency (the client cannot see the server's own)",
            target=_UTILIZATION_TARGET,
            transport=Transport.MOCK_SERVER,
            mock_endpoint=MOCK_LATENCY,
        ),
        Scenario(
            name="wide-roots",
            summary="4 independent LLM roots on 4 models, 200 ms latency, capacity 8 each",
            build=_wide,
            records=750,
            smoke_records=40,
            primary_metric="utilization",
            physical_limit_per_second=_sum_limit(*WIDE),
            limit_note=_LATENCY_NOTE,
            target=_UTILIZATION_TARGET,
            event_kinds=_LATENCY_EVENTS,
            analysis=_capacities(*WIDE),
        ),
        Scenario(
            name="generate-judge",
            summary="llm_text on one model, llm_judge of it on another; 200 ms, capacity 16 each",
            build=_judge,
            # A two-stage pipeline idles the judge for the first latency and the generator for
            # the last, whatever the engine: N records cap it at N / (N + 16). At 3,000 records
            # that bound is 0.995, so the figure measures the engine, not the pipeline's ends.
            records=3000,
            smoke_records=40,
            primary_metric="utilization",
            physical_limit_per_second=_sum_limit(GENERATE, JUDGE),
            limit_note=_LATENCY_NOTE,
            target=_UTILIZATION_TARGET,
            event_kinds=_LATENCY_EVENTS,
            analysis=_capacities(GENERATE, JUDGE),
        ),
        Scenario(
            name="dynamic-calls",
            summary="custom column making 0, 1, 2 or 3 sequential calls per row; 200 ms, cap 32",
            build=_dynamic,
            records=2000,
            smoke_records=40,
            primary_metric="utilization",
            physical_limit_per_second=_sum_limit(DYNAMIC),
            limit_note=_LATENCY_NOTE,
            target=_UTILIZATION_TARGET,
            event_kinds=_LATENCY_EVENTS,
            analysis=_capacities(DYNAMIC),
        ),
        Scenario(
            name="rate-limit",
            summary="client cap 64 against a true capacity of 32 (200 ms): 160 calls/s possible",
            build=_rate_limit,
            records=4000,
            smoke_records=200,
            primary_metric="goodput_ratio",
            ratio_metrics=("goodput_ratio", "goodput_after_settle_ratio"),
            physical_limit_per_second=(RATE_LIMITED.capacity or 0) / RATE_LIMITED.latency_seconds,
            limit_note="true capacity / latency (not the client cap)",
            target="goodput >= 90% of true capacity, < 3% answered 429 after 10 s (SPEC §12)",
            event_kinds=_REQUEST_EVENTS,
            analysis={"settle_seconds": 10.0},
            smoke_analysis={"settle_seconds": 0.2},
        ),
        *(
            Scenario(
                name=name,
                summary=f"3-column chain, 200 ms, capacity 32, client cap 32; another client "
                f"({mode}) holds 24 slots for the first 10 s",
                build=_mock_chain(endpoint),
                records=2000,
                smoke_records=20,
                primary_metric="recovery_seconds",
                ratio_metrics=(),
                physical_limit_per_second=_sum_limit(endpoint),
                limit_note="capacity / latency once the other client has left",
                target="in flight >= 90% of capacity within 5 s of the other client leaving; "
                "goodput from 5 s after it left >= 95% of capacity / latency (SPEC §6.6)",
                transport=Transport.MOCK_SERVER,
                mock_endpoint=endpoint,
                analysis=_changing(restore_at=10.0, capacity=32),
                summary_metrics=("recovery_seconds", "goodput_after_recovery_ratio"),
            )
            for name, endpoint, mode in (
                ("contention-recovery", CONTENDED, "polite"),
                ("contention-recovery-at-once", CONTENDED_AT_ONCE, "retrying its 429s at once"),
            )
        ),
        Scenario(
            name="capacity-drop",
            summary="3-column chain, 200 ms, client cap 32; capacity 32, 8 from 10 s to 20 s, 32",
            build=_mock_chain(DROPPING),
            records=2000,
            smoke_records=20,
            primary_metric="rate_limited_share_outside_changes",
            ratio_metrics=(),
            physical_limit_per_second=_sum_limit(DROPPING),
            limit_note="capacity / latency outside the drop",
            target="429 share < 3% outside the first 2 s after each change; in flight >= 90% of "
            "the restored capacity within 5 s of its return (SPEC §6.6)",
            transport=Transport.MOCK_SERVER,
            mock_endpoint=DROPPING,
            analysis={
                **_changing(restore_at=20.0, capacity=32),
                "change_at_seconds": [10.0, 20.0],
                "settle_after_change_seconds": 2.0,
            },
            summary_metrics=(
                "rate_limited_share_outside_changes",
                "recovery_seconds",
                "server_rate_limited",
            ),
        ),
        Scenario(
            name="rate-limit-no-retry-after",
            summary="client cap 64 against a true capacity of 32 (200 ms), 429s without "
            "Retry-After, over HTTP",
            build=_mock_single(NO_RETRY_AFTER),
            records=4000,
            smoke_records=100,
            primary_metric="goodput_ratio",
            ratio_metrics=("goodput_ratio",),
            physical_limit_per_second=(NO_RETRY_AFTER.capacity or 0)
            / NO_RETRY_AFTER.latency_seconds,
            limit_note="true capacity / latency (not the client cap)",
            target="goodput >= 90% of true capacity (SPEC §6.6)",
            transport=Transport.MOCK_SERVER,
            mock_endpoint=NO_RETRY_AFTER,
        ),
        Scenario(
            name="header-pacing",
            summary=f"a window of {WINDOW_REQUESTS} requests per {WINDOW_SECONDS:g} s (token "
            "bucket) and a loose token window, told only by the rate-limit headers; no client "
            "budget",
            build=_mock_single(WINDOWED),
            records=1500,
            smoke_records=40,
            primary_metric="window_goodput_ratio",
            ratio_metrics=(),
            physical_limit_per_second=WINDOW_REQUESTS / WINDOW_SECONDS,
            limit_note="the window's refill rate (after its first burst)",
            target="no 429 after the first window; goodput >= 95% of the window's limit "
            "(SPEC §6.6)",
            transport=Transport.MOCK_SERVER,
            mock_endpoint=WINDOWED,
            analysis={
                "server_model": "bench-m",
                "window_seconds": WINDOW_SECONDS,
                "window_rate_per_second": WINDOW_REQUESTS / WINDOW_SECONDS,
            },
            summary_metrics=("window_goodput_ratio", "rate_limited_after_first_window"),
        ),
        Scenario(
            name="faults",
            summary="3-column chain over HTTP, 200 ms, capacity 32, client cap 32, 2,000 records; "
            "2% 500, 1% resets, 0.5% hangs of 8 s that keep their server slot; timeout_seconds 5",
            build=_mock_chain(FAULTY),
            records=2000,
            smoke_records=20,
            primary_metric="utilization",
            ratio_metrics=("utilization",),
            physical_limit_per_second=FAULT_CALLS / FAULT_ADJUSTED_SECONDS,
            limit_note="the fault-adjusted limit: 6,000 calls in 37.5 s nominal + 8.25 s of server "
            "slots the faults hold (45.75 s)",
            target=">= 90% of the fault-adjusted limit (SPEC §6.6)",
            transport=Transport.MOCK_SERVER,
            mock_endpoint=FAULTY,
        ),
        Scenario(
            name="heavy-root",
            summary="slow root (100 ms, cap 16) feeding a fast downstream column (5 ms, cap 16)",
            build=_heavy_root,
            records=480,
            smoke_records=40,
            primary_metric="first_downstream_dispatch_seconds",
            limit_note="root model: capacity 16 / 100 ms = 160 calls/s; time to first downstream"
            " dispatch >= one root latency (0.1 s)",
            target="early first downstream dispatch, small ready-to-dispatch gap, 0 hidden waiters",
            event_kinds=_TASK_EVENTS,
            analysis={"downstream_column": "down"},
        ),
        Scenario(
            name="cross-provider-cooldown",
            summary="provider A over-capped (cap 32 vs capacity 8) cools down; B has its own work",
            build=_cooldown,
            records=1200,
            smoke_records=40,
            primary_metric="busy_provider_utilization_in_cooldown",
            ratio_metrics=("busy_provider_utilization_in_cooldown",),
            physical_limit_per_second=_sum_limit(BUSY),
            limit_note="provider B capacity / latency",
            target="B >= 95% utilized while A cools down (SPEC §12; reported here)",
            event_kinds=_REQUEST_EVENTS,
            analysis={
                "cooldown_provider": "p-a",
                "busy_provider": "p-b",
                "busy_capacity": min(BUSY.client_cap, BUSY.capacity or BUSY.client_cap),
            },
        ),
        Scenario(
            name="memory",
            summary="sampler -> expression -> llm_text, zero latency; peak RSS at N records",
            build=_memory,
            records=100_000,
            smoke_records=2000,
            primary_metric="peak_rss_mib",
            limit_note="rows in flight (4 row groups x 1000 rows), not total records",
            target="flat: peak RSS bounded by rows in flight (SPEC §12)",
            process_per_iteration=True,
        ),
    )
}


def scenario_named(name: str) -> Scenario:
    """The scenario ``name``; raises ``KeyError`` listing the known names."""
    try:
        return SCENARIOS[name]
    except KeyError:
        raise KeyError(
            f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)} (or 'all')"
        ) from None
