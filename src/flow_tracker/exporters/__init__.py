"""Exporters: the tracked processes, as seen by other observability tools.

* :mod:`flow_tracker.exporters.opentelemetry` - processes as spans, flows as child
  spans, log entries as span events (extra ``otel``).
* :mod:`flow_tracker.exporters.prometheus` - counters and histograms of processes
  and flows, gauges of what runs and waits now (extra ``prometheus``).
"""
