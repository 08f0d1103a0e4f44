"""The event model's codes mirror the engine enums they stand for."""

from __future__ import annotations

import enum

import pytest

from sluiceway.observability import codes
from sluiceway.requests.admission import DenialReason
from sluiceway.requests.keys import RequestDomain
from sluiceway.requests.latency import HedgeResult
from sluiceway.requests.outcomes import RequestReleaseOutcome
from sluiceway.scheduling.admission import TaskDenialReason
from sluiceway.scheduling.scheduler import TaskOutcomeKind


@pytest.mark.parametrize(
    ("engine", "mirror"),
    [
        (TaskOutcomeKind, codes.TaskOutcomeCode),
        (TaskDenialReason, codes.TaskDenialCode),
        (RequestReleaseOutcome, codes.RequestOutcomeCode),
        (DenialReason, codes.RequestDenialCode),
        (RequestDomain, codes.RequestDomainCode),
        (HedgeResult, codes.HedgeResultCode),
    ],
)
def test_every_engine_value_converts(engine: type[enum.Enum], mirror: type[enum.Enum]) -> None:
    for member in engine:
        assert mirror(member.value).value == member.value
