"""OpenTelemetry: every process a span, every flow a child span, every log entry a span event.

::

    from flow_tracker.exporters import opentelemetry as ft_otel
    ft_otel.install()                      # the global tracer provider, or install(provider)

Built on the event stream (:mod:`flow_tracker.subscribers`): spans are made on
the dispatcher thread, after the fact, with the real start and end times, so
the job's thread pays only for noting which span was current when a process
began (once per process, never per step). Needs only ``opentelemetry-api`` at
run time; the SDK and exporters are the application's choice.

* A process started while a span is current (your own tracing, an
  instrumentation of your web framework) becomes that span's child; a process
  started inside another tracked process is the child of its span.
* A job enqueued from a traced context carries the context in its message
  (Celery headers, Dramatiq options, RQ meta): the job's span continues that trace
  in the worker.
* A failed process or flow gets status ERROR and an ``exception`` event; every
  attempt of a retried job is a span of its own.

Attributes (all under ``flow_tracker.``): ``process_id``, ``process.name``,
``category``, ``status``, ``job_system``, ``job_id``, ``queue``, ``attempt``,
``parent_process_id``, ``skip_reason``; on flow spans ``flow_id``,
``flow.name``, ``flow.depth``, ``status``; on log events ``level`` and ``data``
(as JSON text).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Any

from flow_tracker import jobs, subscribers
from flow_tracker.tracker import BEGIN_HOOKS, Tracker

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace import Span, SpanKind, Status, StatusCode
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "flow_tracker.exporters.opentelemetry needs opentelemetry-api: "
        "pip install 'flow-tracker[otel]'"
    ) from exc

INSTRUMENTATION = "flow_tracker"
MAX_OPEN_SPANS = 100_000
_PROPAGATOR = TraceContextTextMapPropagator()
_NS = 1_000_000_000


def _ns(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds * _NS)


class _Spans:
    """Turns lifecycle events into spans; runs on the event dispatcher thread."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer = tracer
        # "process id:attempt" -> the context it began in (noted on the job's thread)
        self.parents: dict[str, Any] = {}
        self.parents_lock = threading.Lock()
        self.processes: OrderedDict[str, Span] = OrderedDict()
        self.flows: OrderedDict[str, Span] = OrderedDict()

    # -- on the job's thread ----------------------------------------------------

    def note_parent(self, tracker: Tracker) -> None:
        """Remember the context a process begins in: the current span, or the job's message."""
        current = trace.get_current_span().get_span_context()
        if current.is_valid:
            parent = otel_context.get_current()
        else:
            carrier = jobs.JOB_TRACE_CARRIER.get()
            if not carrier:
                return
            parent = _PROPAGATOR.extract(dict(carrier))
        with self.parents_lock:
            # Keyed by attempt too: a retry can begin before the dispatcher has seen
            # the start of the attempt before it.
            self.parents[f"{tracker.process_id}:{tracker._attempt}"] = parent
            if len(self.parents) > MAX_OPEN_SPANS:  # starts never published: forget the oldest
                self.parents.pop(next(iter(self.parents)))

    @staticmethod
    def inject() -> dict[str, str]:
        """The current trace context, for a job's message."""
        carrier: dict[str, str] = {}
        if trace.get_current_span().get_span_context().is_valid:
            _PROPAGATOR.inject(carrier)
        return carrier

    # -- on the dispatcher thread -----------------------------------------------

    def __call__(self, event: dict[str, Any]) -> None:
        name = event["event"]
        if name == "process.started":
            self._process_started(event)
        elif name == "flow.started":
            self._flow_started(event)
        elif name == "log.written":
            self._log(event)
        elif name.startswith("flow."):
            self._flow_ended(event)
        elif name in ("process.queued", "process.progress", "process.requeued"):
            return
        elif name.startswith("process."):
            self._process_ended(event)

    def _process_started(self, event: dict[str, Any]) -> None:
        process_id = event["process_id"]
        with self.parents_lock:
            parent = self.parents.pop(f"{process_id}:{event.get('attempt') or 1}", None)
        # Inside another tracked process: the child of its span.
        parent_span = self.processes.get(event.get("parent_process_id") or "")
        if parent_span is not None:
            parent = trace.set_span_in_context(parent_span)
        attributes = {
            "flow_tracker.process_id": process_id,
            "flow_tracker.process.name": event.get("name") or "",
            "flow_tracker.category": event.get("category") or "",
            "flow_tracker.attempt": int(event.get("attempt") or 1),
        }
        for key in ("job_system", "job_id", "queue", "parent_process_id"):
            if event.get(key):
                attributes[f"flow_tracker.{key}"] = str(event[key])
        span = self.tracer.start_span(
            event.get("name") or "process",
            context=parent,
            kind=SpanKind.CONSUMER if event.get("job_system") else SpanKind.INTERNAL,
            attributes=attributes,
            start_time=_ns(event.get("time")),
        )
        self._remember(self.processes, process_id, span)

    def _process_ended(self, event: dict[str, Any]) -> None:
        span = self.processes.pop(event["process_id"], None)
        if span is None:
            return
        status = event.get("status") or event["event"].split(".", 1)[1]
        span.set_attribute("flow_tracker.status", status)
        if event.get("reason"):
            span.set_attribute("flow_tracker.skip_reason", str(event["reason"]))
        error = event.get("error")
        if status in ("failed", "retrying", "lost") or error:
            _record_error(span, error, event.get("time"), status)
        span.end(end_time=_ns(event.get("time")))

    def _flow_started(self, event: dict[str, Any]) -> None:
        parent_span = self.flows.get(event.get("parent_flow_id") or "") or self.processes.get(
            event["process_id"]
        )
        if parent_span is None:
            return  # its process began before the exporter was installed
        span = self.tracer.start_span(
            event.get("flow_name") or "flow",
            context=trace.set_span_in_context(parent_span),
            attributes={
                "flow_tracker.process_id": event["process_id"],
                "flow_tracker.flow_id": event.get("flow_id") or "",
                "flow_tracker.flow.name": event.get("flow_name") or "",
                "flow_tracker.flow.depth": int(event.get("depth") or 0),
            },
            start_time=_ns(event.get("time")),
        )
        self._remember(self.flows, event.get("flow_id") or "", span)

    def _flow_ended(self, event: dict[str, Any]) -> None:
        span = self.flows.pop(event.get("flow_id") or "", None)
        if span is None:
            return
        status = event["event"].split(".", 1)[1]
        span.set_attribute("flow_tracker.status", status)
        if status == "failed" or event.get("error"):
            _record_error(span, event.get("error"), event.get("time"), status)
        span.end(end_time=_ns(event.get("time")))

    def _log(self, event: dict[str, Any]) -> None:
        span = self.flows.get(event.get("flow_id") or "") or self.processes.get(event["process_id"])
        if span is None:
            return
        attributes: dict[str, Any] = {"flow_tracker.level": event.get("level") or "info"}
        if event.get("data") is not None:
            attributes["flow_tracker.data"] = _json(event["data"])
        span.add_event(
            str(event.get("message") or ""),
            attributes=attributes,
            timestamp=_ns(event.get("time")),
        )

    @staticmethod
    def _remember(table: OrderedDict[str, Span], key: str, span: Span) -> None:
        table[key] = span
        if len(table) > MAX_OPEN_SPANS:  # ends never seen (a crash): end the oldest
            table.popitem(last=False)[1].end()


# Made once: json.dumps with an argument builds an encoder for every call.
_ENCODE = json.JSONEncoder(default=repr).encode


def _json(value: object) -> str:
    try:
        return _ENCODE(value)[:4096]
    except Exception:
        return repr(value)[:4096]


def _record_error(span: Span, error: Any, at: float | None, status: str) -> None:
    if isinstance(error, dict):
        span.add_event(
            "exception",
            attributes={
                "exception.type": str(error.get("class") or ""),
                "exception.message": str(error.get("message") or ""),
                "exception.stacktrace": str(error.get("traceback") or ""),
            },
            timestamp=_ns(at),
        )
        description = f"{error.get('class')}: {error.get('message')}"
    else:
        description = status
    span.set_status(Status(StatusCode.ERROR, description[:1024]))


_installed: list[tuple[_Spans, subscribers.Subscription]] = []


def install(tracer_provider: trace.TracerProvider | None = None) -> None:
    """Export every tracked process as OpenTelemetry spans; calling it again replaces it.

    Args:
        tracer_provider: where spans go (default: the global tracer provider).
    """
    uninstall()
    tracer = trace.get_tracer(INSTRUMENTATION, tracer_provider=tracer_provider)
    spans = _Spans(tracer)
    subscription = subscribers.on("*", spans)
    BEGIN_HOOKS.append(spans.note_parent)
    jobs.TRACE_INJECTORS.append(spans.inject)
    _installed.append((spans, subscription))


def uninstall() -> None:
    """Stop exporting (spans of processes still running are not ended)."""
    while _installed:
        spans, subscription = _installed.pop()
        subscription.cancel()
        if spans.note_parent in BEGIN_HOOKS:
            BEGIN_HOOKS.remove(spans.note_parent)
        if spans.inject in jobs.TRACE_INJECTORS:
            jobs.TRACE_INJECTORS.remove(spans.inject)
