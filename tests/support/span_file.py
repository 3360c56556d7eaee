"""A span exporter that appends each finished span to a file as a JSON line.

Worker processes under test export through it, so the test process can read
the spans a real worker made.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult


class SpanFileExporter(SpanExporter):
    """Appends ``{name, trace_id, span_id, parent_span_id, attributes}`` per span."""

    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Write the spans (one ``write`` per span, so processes do not interleave)."""
        with open(self.path, "a", encoding="utf-8") as out:
            for span in spans:
                row = {
                    "name": span.name,
                    "trace_id": f"{span.context.trace_id:032x}",
                    "span_id": f"{span.context.span_id:016x}",
                    "parent_span_id": f"{span.parent.span_id:016x}" if span.parent else None,
                    "attributes": dict(span.attributes or {}),
                }
                out.write(json.dumps(row) + "\n")
                out.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Nothing to release: the file is opened per export."""
