"""Every action delivers, or says it has not: the outbox on SQLite and PostgreSQL.

A retry or a requeue made where the queue cannot be reached from (another
process that does not declare the workflow, no integration installed, a broker
that refuses) is stored in the outbox with the change, says "waiting for a
worker of <queue>", and is delivered once by a process that can.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
from sqlalchemy import insert, select

import flow_tracker
from flow_tracker import delivery, job_systems, runtime
from flow_tracker.recovery import requeue_candidates, requeue_job_id
from flow_tracker.status import Status
from flow_tracker.store.clock import database_now
from flow_tracker.store.engine import Store
from flow_tracker.store.schema import outbox as outbox_table
from flow_tracker.store.schema import processes

DEADLINE_S = 60.0
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _wait_for(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {DEADLINE_S:g} s for {what}")
        time.sleep(0.05)


def _rows() -> list[Any]:
    with runtime.store().engine.connect() as conn:
        return list(conn.execute(select(outbox_table)).all())


RUNS: dict[str, int] = {}
FAILING = {"charge": True}

billing = flow_tracker.workflow("outbox_billing")


@billing.step()
def charge(context: dict[str, Any]) -> str:
    RUNS["charge"] = RUNS.get("charge", 0) + 1
    if FAILING["charge"]:
        raise ValueError("card declined")
    return "paid"


@billing.step(depends_on=["charge"])
def receipt(context: dict[str, Any], charge: str) -> str:
    RUNS["receipt"] = RUNS.get("receipt", 0) + 1
    return f"receipt for {charge}"


def _in_another_process(url: str, code: str) -> str:
    """Run ``code`` in a fresh interpreter that declares no workflow (a dashboard, a CLI)."""
    script = f"import flow_tracker\nflow_tracker.configure(database_url={url!r})\n{code}"
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture
def failed_run(tracked: str) -> Iterator[uuid.UUID]:
    RUNS.clear()
    FAILING["charge"] = True
    run = billing.run(context={"cart": 7})
    assert run.wait(30).steps["charge"].status == "failed"
    yield run.id
    FAILING["charge"] = True


def test_a_threads_retry_from_a_process_without_the_workflow_waits_then_runs_once_here(
    tracked: str, failed_run: uuid.UUID
) -> None:
    FAILING["charge"] = False
    said = _in_another_process(
        tracked,
        f"print(flow_tracker.retry_step({str(failed_run)!r}, 'charge', by='operator'))",
    )
    # The other process did not claim to have sent it. (Whether this process's
    # pool has already run it by now depends on its poll: counted below, once.)
    assert said == "waiting for a worker of threads"
    # This process declares the workflow and runs the pool: it delivers to itself.
    status = flow_tracker.get_workflow(failed_run)
    _wait_for("the retried run to complete", lambda: flow_tracker.get_workflow(failed_run).finished)
    status = flow_tracker.get_workflow(failed_run)
    assert status.status == "completed", {n: s.status for n, s in status.steps.items()}
    assert RUNS == {"charge": 2, "receipt": 1}
    [row] = _rows()
    assert row.status == "sent" and row.kind == "step" and row.workflow == "outbox_billing"
    assert row.sent_by.endswith(f":{os.getpid()}")


def test_a_retry_stores_its_request_with_the_change_and_health_counts_it(
    tracked: str, failed_run: uuid.UUID
) -> None:
    # Another process's view: the workflow is not declared there, so it cannot send.
    from flow_tracker.workflows import definition

    declared = definition._WORKFLOWS.pop("outbox_billing")
    try:
        result = flow_tracker.retry_step(failed_run, "charge")
        health = flow_tracker.health()
    finally:
        definition._WORKFLOWS["outbox_billing"] = declared
    assert (result.ok, result.status, str(result)) == (
        False,
        "waiting",
        "waiting for a worker of threads",
    )
    assert health.pending_deliveries == {"threads": 1}
    assert health.oldest_pending_delivery_age_s is not None
    # The step is queued in the same transaction that stored its request.
    _wait_for("the request to be delivered here", lambda: _rows()[0].status == "sent")


def _lost_job(**values: Any) -> uuid.UUID:
    store = runtime.store()
    store.ensure_schema()
    with store.engine.begin() as conn:
        now = database_now(conn)
        row = {
            "id": uuid.uuid4(),
            "name": "charge",
            "category": "jobs",
            "status": "lost",
            "created_at": now,
            "finished_at": now,
            "job_system": "outboxq",
            "job_id": uuid.uuid4().hex,
            "queue": "default",
            "job_payload": {"task": "app.charge", "args": [1]},
            **values,
        }
        conn.execute(insert(processes).values(**row))
    return row["id"]  # type: ignore[no-any-return]


class Broker:
    """A queue system registered as an integration would: it refuses while ``down``."""

    def __init__(self) -> None:
        self.down = False
        self.published: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, payload: Mapping[str, Any], job_id: str) -> None:
        if self.down:
            raise ConnectionError("broker unreachable")
        with self.lock:
            self.published.append(job_id)


@pytest.fixture
def broker() -> Iterator[Broker]:
    queue = Broker()
    yield queue
    job_systems.unregister("outboxq")


def test_a_requeue_without_the_integration_leaves_the_job_lost_until_a_worker_sends_it(
    tracked: str, broker: Broker
) -> None:
    lost = _lost_job()
    [result] = flow_tracker.requeue([lost])
    assert (result.outcome, result.ok, result.message) == (
        "waiting",
        False,
        "waiting for a worker of outboxq",
    )
    # Still lost, still found, still counted, and shown as waiting.
    assert requeue_candidates(Status.LOST) == [lost]
    health = flow_tracker.health()
    assert health.lost == 1 and not health.healthy
    assert health.pending_deliveries == {"outboxq": 1}
    [forgotten] = flow_tracker.recovery.forgotten_jobs().lost
    assert forgotten.delivery == "waiting for a worker of outboxq"
    # Asked twice, it is one request.
    flow_tracker.requeue([lost])
    assert len(_rows()) == 1
    # A worker of that queue appears (its install starts the delivery thread).
    job_systems.update("outboxq", requeue=broker)
    delivery.serve()
    _wait_for("the worker to deliver the requeue", lambda: _rows()[0].status == "sent")
    assert broker.published == [requeue_job_id(lost)]
    assert requeue_candidates(Status.LOST) == []
    assert flow_tracker.health().lost == 0
    [row] = _rows()
    assert row.sent_by == delivery.who()


def test_a_requeue_whose_publish_fails_keeps_the_job_lost_and_pending_until_sent(
    tracked: str, broker: Broker
) -> None:
    job_systems.update("outboxq", requeue=broker)
    lost = _lost_job()
    broker.down = True
    [result] = flow_tracker.requeue([lost])
    assert result.outcome == "waiting" and not result.ok
    assert "broker unreachable" in result.message
    # No "requeued as" copy, failed or otherwise: the job reads lost, not requeued.
    with runtime.store().engine.connect() as conn:
        copies = conn.execute(
            select(processes.c.id).where(processes.c.requeued_from_id == lost)
        ).all()
    assert copies == []
    assert requeue_candidates(Status.LOST) == [lost]
    assert flow_tracker.health().lost == 1
    [row] = _rows()
    assert row.status == "pending" and "broker unreachable" in row.last_error
    # The broker is back: the request is delivered once its backoff has passed.
    broker.down = False
    delivery.serve()
    _wait_for("the pending requeue to be delivered", lambda: _rows()[0].status == "sent")
    assert broker.published == [requeue_job_id(lost)]
    assert requeue_candidates(Status.LOST) == []
    assert _rows()[0].status == "sent"


def test_two_deliverers_racing_on_one_request_publish_it_once(tracked: str, broker: Broker) -> None:
    lost = [_lost_job() for _ in range(20)]
    flow_tracker.requeue(lost)
    job_systems.update("outboxq", requeue=broker)
    stores = [Store(tracked), Store(tracked)]
    start = threading.Barrier(2)
    counts: list[int] = []

    def deliverer(store: Store) -> None:
        start.wait()
        counts.append(delivery.deliver_pending(store=store))

    threads = [threading.Thread(target=deliverer, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE_S)
    for s in stores:
        s.dispose()
    # (This process's own delivery thread may take a share too: each is published once.)
    assert len(counts) == 2
    _wait_for("every request to be sent", lambda: {r.status for r in _rows()} == {"sent"})
    assert sorted(broker.published) == sorted(requeue_job_id(p) for p in lost)
