"""Public fakes for testing generators and engines without real providers.

``sluiceway.testing.fakes`` has :class:`FakeModelCalls` (a recording ``ModelCalls``);
``sluiceway.testing.providers`` has a scripted fake provider client.
"""

from sluiceway.testing.fakes import (
    FakeCallMethod,
    FakeModelCalls,
    RecordedModelCall,
    schema_instance,
    text_vector,
)

__all__ = [
    "FakeCallMethod",
    "FakeModelCalls",
    "RecordedModelCall",
    "schema_instance",
    "text_vector",
]
