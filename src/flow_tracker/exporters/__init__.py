"""Exporters: the tracked processes, as seen by other observability tools.

* :mod:`flow_tracker.exporters.opentelemetry` - processes as spans, flows as child
  spans, log entries as span events (extra ``otel``).
"""
