"""Prometheus: counters, histograms and gauges of the tracked processes.

::

    from flow_tracker.exporters import prometheus as ft_prometheus
    ft_prometheus.install()            # in every process that runs jobs (workers too)

The dashboard app serves ``/metrics``; without it, mount :func:`asgi_app` or
:func:`wsgi_app`. Counters and histograms are fed by the event stream
(:mod:`flow_tracker.subscribers`), off the job's thread. Gauges of running and
queued jobs and of queue lag are read from the tracking database when scraped,
so they are the same whichever process is scraped and cover every host.

Multiprocess (Celery prefork, RQ's forked work-horses, gunicorn): set
``PROMETHEUS_MULTIPROC_DIR`` before the workers start, as prometheus_client
documents; every process then writes its own files and ``/metrics`` sums them.

Label values are bounded: no ids; process names and categories come from your
code; flow names beyond ``max_flow_names`` distinct ones count as ``"other"``.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from flow_tracker import runtime, subscribers
from flow_tracker.store import queries
from flow_tracker.store.engine import Store

try:
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        REGISTRY,
        CollectorRegistry,
        Counter,
        Histogram,
        generate_latest,
        make_asgi_app,
        make_wsgi_app,
    )
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.multiprocess import MultiProcessCollector
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "flow_tracker.exporters.prometheus needs prometheus-client: "
        "pip install 'flow-tracker[prometheus]'"
    ) from exc

OTHER = "other"
DEFAULT_MAX_FLOW_NAMES = 100
MAX_PROCESS_NAMES = 1_000
# Seconds: from a millisecond step to an hour-long import.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
ENDS = frozenset({"completed", "failed", "retrying", "skipped", "cancelled", "lost"})


class _Names:
    """The first ``limit`` distinct names, then ``"other"``: bounded label values."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen: set[str] = set()

    def __call__(self, name: object) -> str:
        text = str(name or "")[:200]
        if text in self.seen:
            return text
        if len(self.seen) < self.limit:
            self.seen.add(text)
            return text
        return OTHER


class Metrics:
    """The collectors, fed by the event stream (see the module)."""

    def collectors(self) -> list[Collector]:
        """Every collector this object registered."""
        return [
            self.processes,
            self.started,
            self.process_seconds,
            self.flow_seconds,
            self.dropped_logs,
            self.internal_errors,
            self.failed_callbacks,
        ]

    def __init__(self, registry: CollectorRegistry | None, max_flow_names: int) -> None:
        kw: dict[str, Any] = {"registry": registry} if registry is not None else {}
        self.processes = Counter(
            "flow_tracker_processes",
            "Processes (job attempts) that ended, by name, category and status.",
            ["name", "category", "status"],
            **kw,
        )
        self.started = Counter(
            "flow_tracker_processes_started",
            "Processes (job attempts) that began, by name and category.",
            ["name", "category"],
            **kw,
        )
        self.process_seconds = Histogram(
            "flow_tracker_process_duration_seconds",
            "How long processes ran, by name, category and status.",
            ["name", "category", "status"],
            buckets=BUCKETS,
            **kw,
        )
        self.flow_seconds = Histogram(
            "flow_tracker_flow_duration_seconds",
            f"How long flows ran, by flow name (beyond {max_flow_names} names: other) and status.",
            ["flow", "status"],
            buckets=BUCKETS,
            **kw,
        )
        self.dropped_logs = Counter(
            "flow_tracker_dropped_log_entries",
            "Log entries dropped under memory pressure, by process name.",
            ["name"],
            **kw,
        )
        self.internal_errors = Counter(
            "flow_tracker_internal_errors",
            "Errors of flow-tracker's own (never raised into jobs).",
            **kw,
        )
        self.failed_callbacks = Counter(
            "flow_tracker_subscriber_errors",
            "Event subscriber callbacks that raised.",
            **kw,
        )
        self.flow_names = _Names(max_flow_names)
        self.process_names = _Names(MAX_PROCESS_NAMES)
        self._errors_seen = runtime.internal_error_count()
        self._callbacks_seen = subscribers.BUS.failed_callbacks
        self._lock = threading.Lock()

    def __call__(self, event: dict[str, Any]) -> None:
        """Count one event (on the event dispatcher thread)."""
        name = event["event"]
        if name == "process.started":
            self.started.labels(
                self.process_names(event.get("name")), str(event.get("category") or "")
            ).inc()
        elif name.startswith("process.") and name[8:] in ENDS:
            status = name[8:]
            labels = (
                self.process_names(event.get("name")),
                str(event.get("category") or ""),
                status,
            )
            self.processes.labels(*labels).inc()
            duration = event.get("duration_ms")
            if isinstance(duration, (int, float)) and duration >= 0:
                self.process_seconds.labels(*labels).observe(duration / 1000.0)
            dropped = event.get("dropped_logs")
            if isinstance(dropped, int) and dropped > 0:
                self.dropped_logs.labels(labels[0]).inc(dropped)
        elif name.startswith("flow.") and name != "flow.started":
            duration = event.get("duration_ms")
            if isinstance(duration, (int, float)) and duration >= 0:
                self.flow_seconds.labels(self.flow_names(event.get("flow_name")), name[5:]).observe(
                    duration / 1000.0
                )
        self.catch_up()

    def catch_up(self) -> None:
        """Add the internal and subscriber errors counted since the last call."""
        with self._lock:
            errors = runtime.internal_error_count()
            if errors > self._errors_seen:
                self.internal_errors.inc(errors - self._errors_seen)
            self._errors_seen = errors
            failed = subscribers.BUS.failed_callbacks
            if failed > self._callbacks_seen:
                self.failed_callbacks.inc(failed - self._callbacks_seen)
            self._callbacks_seen = failed


class QueueCollector(Collector):
    """Running and queued jobs, and the age of the oldest queued one, read from the database."""

    def __init__(self, store: Callable[[], Store]) -> None:
        self.store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Read the gauges (one grouped query over the unfinished rows)."""
        running = GaugeMetricFamily(
            "flow_tracker_running", "Processes running now, by category.", labels=["category"]
        )
        queued = GaugeMetricFamily(
            "flow_tracker_queued_jobs", "Jobs waiting in their queue now.", labels=["queue"]
        )
        lag = GaugeMetricFamily(
            "flow_tracker_queue_lag_seconds",
            "Age of the oldest job still queued, per queue.",
            labels=["queue"],
        )
        try:
            rows = queries.running_and_queued(self.store())
        except Exception as exc:  # a scrape must answer even with the database away
            runtime.report_internal_error(exc, "reading queue gauges for Prometheus")
            return
        now = time.time()
        by_category: dict[str, int] = {}
        by_queue: dict[str, tuple[int, float]] = {}
        for status, category, queue, count, oldest in rows:
            if status == "running":
                by_category[category] = by_category.get(category, 0) + int(count)
            else:
                name = queue or ""
                seen, age = by_queue.get(name, (0, 0.0))
                waited = max(0.0, now - oldest.timestamp()) if oldest is not None else 0.0
                by_queue[name] = (seen + int(count), max(age, waited))
        for category, count in sorted(by_category.items()):
            running.add_metric([category], count)
        for queue, (count, age) in sorted(by_queue.items()):
            queued.add_metric([queue], count)
            lag.add_metric([queue], age)
        yield running
        yield queued
        yield lag


_state: dict[str, Any] = {}


def install(
    *, registry: CollectorRegistry | None = None, max_flow_names: int = DEFAULT_MAX_FLOW_NAMES
) -> Metrics:
    """Count this interpreter's processes and flows; calling it again returns the same.

    Args:
        registry: where the collectors go (default: prometheus_client's own).
        max_flow_names: distinct flow names kept as label values; the rest are ``"other"``.
    """
    found = _state.get("metrics")
    if found is not None:
        return found  # type: ignore[no-any-return]
    metrics = Metrics(registry, max_flow_names)
    _state["metrics"] = metrics
    _state["subscription"] = subscribers.on("*", metrics)
    _state["registry"] = registry
    return metrics


def scrape_registry(store: Callable[[], Store] | None = None) -> CollectorRegistry:
    """The registry ``/metrics`` reads: this process's (or every process's) metrics and gauges."""
    metrics = _state.get("metrics")
    if metrics is not None:
        metrics.catch_up()
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        source = _state.get("registry") or REGISTRY
        registry.register(_Forward(source))
    registry.register(QueueCollector(store or runtime.store))
    return registry


class _Forward(Collector):
    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self) -> Iterable[Any]:
        return self.source.collect()


def render(store: Callable[[], Store] | None = None) -> tuple[bytes, str]:
    """The text exposition of :func:`scrape_registry` and its content type."""
    return generate_latest(scrape_registry(store)), CONTENT_TYPE_LATEST


def asgi_app() -> Any:
    """An ASGI app serving the metrics (mount it at ``/metrics``)."""
    return make_asgi_app(scrape_registry())


def wsgi_app() -> Any:
    """A WSGI app serving the metrics (mount it at ``/metrics``)."""
    return make_wsgi_app(scrape_registry())


def uninstall() -> None:
    """Stop counting and take the collectors out of their registry.

    A later :func:`install` in the same interpreter then starts from zero instead
    of failing on metric names the registry already holds.
    """
    subscription = _state.pop("subscription", None)
    if subscription is not None:
        subscription.cancel()
    metrics = _state.get("metrics")
    if metrics is not None:
        registry = _state.get("registry") or REGISTRY
        for collector in metrics.collectors():
            with contextlib.suppress(KeyError):  # unregistered by the app already
                registry.unregister(collector)
    _state.clear()
