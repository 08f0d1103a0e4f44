"""Request admission and the model-call boundary: keys, the admission controller, the executor
and the model facade generators call (SPEC §6)."""

from sluiceway.requests.admission import (
    DenialReason,
    ProviderModelStatistics,
    ReleaseResult,
    RequestAdmissionController,
    RequestAdmissionDenied,
    RequestAdmissionItem,
    RequestAdmissionLease,
    RequestAdmissionStatistics,
    RequestDomainStatistics,
)
from sluiceway.requests.executor import ModelRequestExecutor, ModelRequestExecutorStatistics
from sluiceway.requests.facade import ModelFacade
from sluiceway.requests.keys import (
    ModelSpec,
    ModelSpecLike,
    ProviderModelKey,
    RequestDomain,
    RequestResourceKey,
    RequestResourceResolver,
    ResolvedModel,
)
from sluiceway.requests.limits import (
    RequestLimit,
    RequestLimitFactory,
    StaticRequestLimit,
    static_limits,
)
from sluiceway.requests.outcomes import RequestReleaseOutcome, classify_exception
from sluiceway.requests.retry import RetryPolicy, retry_delay_seconds

__all__ = [
    "DenialReason",
    "ModelFacade",
    "ModelRequestExecutor",
    "ModelRequestExecutorStatistics",
    "ModelSpec",
    "ModelSpecLike",
    "ProviderModelKey",
    "ProviderModelStatistics",
    "ReleaseResult",
    "RequestAdmissionController",
    "RequestAdmissionDenied",
    "RequestAdmissionItem",
    "RequestAdmissionLease",
    "RequestAdmissionStatistics",
    "RequestDomain",
    "RequestDomainStatistics",
    "RequestLimit",
    "RequestLimitFactory",
    "RequestReleaseOutcome",
    "RequestResourceKey",
    "RequestResourceResolver",
    "ResolvedModel",
    "RetryPolicy",
    "StaticRequestLimit",
    "classify_exception",
    "retry_delay_seconds",
    "static_limits",
]
