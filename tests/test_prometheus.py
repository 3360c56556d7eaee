"""Prometheus metrics: counters and histograms from the event stream, gauges from the database."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import flow_tracker
from flow_tracker.exporters import prometheus as ft_prometheus
from flow_tracker.jobs import record_enqueued


@pytest.fixture
def registry() -> Iterator[CollectorRegistry]:
    registry = CollectorRegistry()
    ft_prometheus.install(registry=registry, max_flow_names=2)
    yield registry
    ft_prometheus.uninstall()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition by (name, sorted labels)."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_processes_and_flows_are_counted_and_timed_with_bounded_labels(
    tracked: str, registry: CollectorRegistry
) -> None:
    for i in range(3):
        with flow_tracker.track("ImportOrders", category="jobs") as tracker:
            for flow in ("download", "parse", f"store shard {i}"):
                with tracker.flow(flow):
                    pass
    with pytest.raises(KeyError), flow_tracker.track("ChargeCard"):
        raise KeyError("card")
    assert flow_tracker.flush()
    body, content_type = ft_prometheus.render()
    assert content_type.startswith("text/plain")
    found = samples(body.decode())
    done = (("category", "jobs"), ("name", "ImportOrders"), ("status", "completed"))
    assert found[("flow_tracker_processes_total", done)] == 3
    failed = (("category", "jobs"), ("name", "ChargeCard"), ("status", "failed"))
    assert found[("flow_tracker_processes_total", failed)] == 1
    assert found[("flow_tracker_process_duration_seconds_count", done)] == 3
    assert found[("flow_tracker_processes_started_total", done[:2])] == 3
    flows = {
        dict(labels)["flow"]: value
        for (name, labels), value in found.items()
        if name == "flow_tracker_flow_duration_seconds_count"
    }
    # Two flow names kept as labels (max_flow_names=2); every other name is "other".
    assert flows == {"download": 3, "parse": 3, "other": 3}
    assert not any("process_id" in dict(labels) for _, labels in found)


def test_running_queued_and_queue_lag_come_from_the_database(
    tracked: str, registry: CollectorRegistry
) -> None:
    record_enqueued(job_system="rq", job_id="m-1", name="resize", queue="media")
    record_enqueued(job_system="rq", job_id="m-2", name="resize", queue="media")
    running = flow_tracker.start("sync", category="services")
    assert flow_tracker.flush()
    found = samples(ft_prometheus.render()[0].decode())
    assert found[("flow_tracker_queued_jobs", (("queue", "media"),))] == 2
    assert found[("flow_tracker_queue_lag_seconds", (("queue", "media"),))] >= 0
    assert found[("flow_tracker_running", (("category", "services"),))] == 1
    running.complete()


def test_the_dashboard_serves_metrics(tracked: str, registry: CollectorRegistry) -> None:
    from starlette.testclient import TestClient

    from flow_tracker.web import create_app

    with flow_tracker.track("Nightly"):
        pass
    assert flow_tracker.flush()
    app = create_app(tracked)
    with TestClient(app) as client:
        response = client.get("/metrics")
    app.state.dashboard.store.dispose()
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert (
        'flow_tracker_processes_total{category="jobs",name="Nightly",status="completed"} 1.0'
        in (response.text)
    )
