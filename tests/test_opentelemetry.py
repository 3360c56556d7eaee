"""OpenTelemetry export, checked with the SDK's in-memory exporter."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import flow_tracker
from flow_tracker.exporters import opentelemetry as ft_otel
from flow_tracker.jobs import finish_job, start_job, trace_carrier
from flow_tracker.status import Status


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    ft_otel.install(provider)
    yield provider, exporter
    ft_otel.uninstall()


def _by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    assert flow_tracker.flush()
    return {span.name: span for span in exporter.get_finished_spans()}


def test_a_process_is_a_span_its_flows_children_and_its_logs_events(
    tracked: str, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    _, exporter = spans
    with flow_tracker.track("ImportOrders", category="jobs") as tracker:
        with tracker.flow("download") as download:
            with download.flow("fetch orders.csv") as fetch:
                fetch.info("fetched", data={"bytes": 1200})
        tracker.warning("one row skipped")
    found = _by_name(exporter)
    process, download_span, fetch_span = (
        found["ImportOrders"],
        found["download"],
        found["fetch orders.csv"],
    )
    assert process.parent is None
    assert download_span.parent is not None and fetch_span.parent is not None
    assert download_span.parent.span_id == process.context.span_id
    assert fetch_span.parent.span_id == download_span.context.span_id
    assert {s.context.trace_id for s in found.values()} == {process.context.trace_id}
    # Real times: children inside their parents.
    starts = [s.start_time or 0 for s in (process, download_span, fetch_span)]
    ends = [s.end_time or 0 for s in (fetch_span, download_span, process)]
    assert starts == sorted(starts) and ends == sorted(ends) and starts[0] > 0
    attributes = dict(process.attributes or {})
    assert attributes["flow_tracker.process_id"] == str(tracker.process_id)
    assert attributes["flow_tracker.category"] == "jobs"
    assert attributes["flow_tracker.status"] == "completed"
    (fetched,) = fetch_span.events
    assert fetched.name == "fetched"
    assert dict(fetched.attributes or {}) == {
        "flow_tracker.level": "info",
        "flow_tracker.data": '{"bytes": 1200}',
    }
    assert [e.name for e in process.events] == ["one row skipped"]
    assert process.status.status_code is StatusCode.UNSET


def test_errors_set_the_status_and_record_the_exception(
    tracked: str, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    _, exporter = spans
    tracker = flow_tracker.start("ChargeCard")
    with pytest.raises(ConnectionError), tracker.flow("call gateway"):
        raise ConnectionError("gateway timeout")
    tracker.complete(ConnectionError("gateway timeout"))
    found = _by_name(exporter)
    stacktraces = {}
    for span in (found["ChargeCard"], found["call gateway"]):
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == "ConnectionError: gateway timeout"
        (exception,) = [e for e in span.events if e.name == "exception"]
        attributes = dict(exception.attributes or {})
        assert attributes["exception.type"] == "ConnectionError"
        assert attributes["exception.message"] == "gateway timeout"
        stacktraces[span.name] = str(attributes["exception.stacktrace"])
    # The flow's error was raised: its traceback says where.
    assert "Traceback (most recent call last)" in stacktraces["call gateway"]
    assert 'raise ConnectionError("gateway timeout")' in stacktraces["call gateway"]


def test_a_process_started_inside_an_apps_span_is_its_child(
    tracked: str, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    app_tracer = provider.get_tracer("app")
    with app_tracer.start_as_current_span("POST /orders") as request:
        with flow_tracker.track("PlaceOrder"):
            with flow_tracker.track("ReserveStock"):  # a process inside a process
                pass
    found = _by_name(exporter)
    place, reserve = found["PlaceOrder"], found["ReserveStock"]
    assert place.parent is not None and place.parent.span_id == request.get_span_context().span_id
    assert reserve.parent is not None and reserve.parent.span_id == place.context.span_id
    assert place.context.trace_id == request.get_span_context().trace_id


def test_every_attempt_of_a_retried_job_is_a_span_continuing_the_senders_trace(
    tracked: str, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    with provider.get_tracer("app").start_as_current_span("enqueue") as sender:
        carrier = trace_carrier()  # what an integration puts in the message
    assert carrier is not None and "traceparent" in carrier
    first = start_job(
        job_system="rq", job_id="otel-1", name="Resize", queue="q", attempt=1, trace=carrier
    )
    finish_job(first, Status.RETRYING, ConnectionError("flaky"))
    second = start_job(
        job_system="rq", job_id="otel-1", name="Resize", queue="q", attempt=2, trace=carrier
    )
    finish_job(second, Status.COMPLETED)
    assert flow_tracker.flush()
    attempts = [s for s in exporter.get_finished_spans() if s.name == "Resize"]
    assert [dict(s.attributes or {})["flow_tracker.attempt"] for s in attempts] == [1, 2]
    assert [dict(s.attributes or {})["flow_tracker.status"] for s in attempts] == [
        "retrying",
        "completed",
    ]
    for span in attempts:
        assert span.parent is not None
        assert span.parent.span_id == sender.get_span_context().span_id
        assert span.context.trace_id == sender.get_span_context().trace_id
        assert dict(span.attributes or {})["flow_tracker.job_id"] == "otel-1"


def test_without_a_tracer_no_trace_context_is_carried(tracked: str) -> None:
    assert trace_carrier() is None
    assert not trace.get_current_span().get_span_context().is_valid


def test_spans_carry_redacted_data_and_messages_never_the_raw_secret(
    tracked: str, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    _, exporter = spans
    with flow_tracker.track("Login", metadata={"password": "hunter2"}) as tracker:
        tracker.info("token abcdef123456 used", data={"password": "hunter2", "user": "ann"})
    found = _by_name(exporter)
    dumped = repr(
        [
            (dict(s.attributes or {}), [(e.name, dict(e.attributes or {})) for e in s.events])
            for s in found.values()
        ]
    )
    assert "hunter2" not in dumped and "abcdef123456" not in dumped
    (event,) = found["Login"].events
    assert '"user": "ann"' in str(dict(event.attributes or {})["flow_tracker.data"])
