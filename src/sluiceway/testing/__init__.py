"""Public fakes for testing generators and engines without real providers.

``sluiceway.testing.fakes`` has :class:`FakeModelCalls` (a recording ``ModelCalls``);
``sluiceway.testing.providers`` has a scripted fake provider client;
``sluiceway.testing.clock`` has :class:`FakeClock` (a fake clock that also runs timers).
"""

from sluiceway.testing.clock import FakeClock, FakeTimerHandle
from sluiceway.testing.fakes import (
    FakeCallMethod,
    FakeModelCalls,
    RecordedModelCall,
    schema_instance,
    text_vector,
)

__all__ = [
    "FakeCallMethod",
    "FakeClock",
    "FakeModelCalls",
    "FakeTimerHandle",
    "RecordedModelCall",
    "schema_instance",
    "text_vector",
]
