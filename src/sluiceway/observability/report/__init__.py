"""The run report (SPEC §9.3): ``report.md`` with PNG plots and a bottleneck attribution,
rebuilt from a run's ``events.jsonl`` by ``build_report`` (``sluiceway report RUN_DIR``)."""

from __future__ import annotations

from sluiceway.observability.report.attribution import (
    Attribution,
    AttributionRow,
    Layer,
    attribute,
)
from sluiceway.observability.report.document import (
    REPORT_FILE_NAME,
    ReportArtifacts,
    build_report,
    render_report,
)

__all__ = [
    "REPORT_FILE_NAME",
    "Attribution",
    "AttributionRow",
    "Layer",
    "ReportArtifacts",
    "attribute",
    "build_report",
    "render_report",
]
