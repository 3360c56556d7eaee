"""Every action delivers, or says it has not: real Celery, RQ and Dramatiq workers.

The test process plays the dashboard or the CLI: it has no queue integration
(see ``without_integrations``) and never sends a message itself. Retries and
requeues made from here, or from a CLI, wait in the outbox and say so; a real
worker of the queue started later delivers them, once, however many race.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select

import flow_tracker
from flow_tracker import delivery, runtime
from flow_tracker.recovery import requeue_candidates
from flow_tracker.status import Status
from flow_tracker.store.clock import database_now
from flow_tracker.store.schema import outbox as outbox_table
from flow_tracker.store.schema import processes
from tests.conftest import _truncate
from tests.integrations import delivery_jobs
from tests.integrations.workers import REPO, bin_path, require_service, worker_process
from tests.support.proxy import TcpProxy
from tests.support.queues import only_the_pool
from tests.workflows import steps
from tests.workflows.test_queues import RIGS, _env

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

# Generous for a busy 2-core machine; an idle one delivers within a few seconds.
DEADLINE_S = 240.0


@pytest.fixture
def without_integrations(monkeypatch: pytest.MonkeyPatch) -> None:
    """Send and deliver nothing from this process, whatever other tests installed in it."""
    only_the_pool(monkeypatch)


@pytest.fixture
def tracking(pg_server_url: str, without_integrations: None) -> Iterator[str]:
    """An empty PostgreSQL tracking database and this run's emptied queues, configured here."""
    require_service("127.0.0.1", 6379, "Redis")
    steps.clear_queues()  # not the whole database: another run may be using it
    _truncate(pg_server_url)
    flow_tracker.configure(database_url=pg_server_url, log_to_stdlib=False)
    yield pg_server_url
    flow_tracker.reset()


def _wait_for(what: str, check: Callable[[], bool], *logs: Path) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not check():
        if time.monotonic() > deadline:
            tails = "\n".join(
                log.read_text(errors="replace")[-3000:] for log in logs if log.exists()
            )
            raise AssertionError(f"waited {DEADLINE_S:g} s for {what}\n{tails}")
        time.sleep(0.2)


def _python(url: str, code: str) -> str:
    """Run ``code`` in a fresh interpreter on the tracking database; return what it printed."""
    done = subprocess.run(
        [sys.executable, "-c", f"import flow_tracker\n{code}"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **_env(url)},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``flow-tracker ARGS`` as an operator types it: no ``--import``, no integration."""
    return subprocess.run(
        [bin_path("flow-tracker"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "FLOW_TRACKER_DATABASE_URL": url, "NO_COLOR": "1"},
    )


def _requests(target: uuid.UUID) -> list[Any]:
    with runtime.store().engine.connect() as conn:
        return list(conn.execute(select(outbox_table).where(outbox_table.c.target_id == target)))


def _failed_runs(system: str, url: str, keys: list[str], log: Path) -> list[uuid.UUID]:
    """Runs of ``<system>_orders`` whose ``charge`` failed every attempt, made by a real worker."""
    rig = RIGS[system]
    for key in keys:
        steps.set_fails(key, 99)
    started = f"import {rig.module} as m\n" + "\n".join(
        f"print(m.WORKFLOWS['orders'].run(context={{'key': {key!r}}}).id)" for key in keys
    )
    with worker_process(rig.worker, _env(url), log):
        runs = [uuid.UUID(line) for line in _python(url, started).split()]
        _wait_for(
            "the runs to fail",
            lambda: all(flow_tracker.get_workflow(r).status == "failed" for r in runs),
            log,
        )
    for key in keys:
        steps.set_fails(key, 0)
    return runs


def _completed(runs: list[uuid.UUID]) -> bool:
    return all(flow_tracker.get_workflow(r).status == "completed" for r in runs)


@pytest.mark.parametrize("system", ["celery", "rq", "dramatiq"])
def test_a_retry_from_the_cli_while_no_worker_runs_waits_then_a_new_worker_runs_it_once(
    system: str, tracking: str, tmp_path: Path
) -> None:
    key = f"wait-{uuid.uuid4().hex[:6]}"
    [run] = _failed_runs(system, tracking, [key], tmp_path / "first.log")

    done = _cli(tracking, "workflows", "retry", str(run), "charge", "--reason", "gateway fixed")

    # Nothing was sent, and the operator is told so: no worker of the queue runs.
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"waiting for a worker of {system}" in done.stdout
    charge = flow_tracker.get_workflow(run).steps["charge"]
    assert charge.process_id is not None
    waiting = {charge.process_id: f"waiting for a worker of {system}"}
    assert delivery.pending_for([charge.process_id]) == waiting
    assert flow_tracker.health().pending_deliveries == {system: 1}
    assert steps.counts(key)["charge"] == 3

    second = tmp_path / "second.log"
    with worker_process(RIGS[system].worker, _env(tracking), second):
        _wait_for(f"a {system} worker to deliver the retry", lambda: _completed([run]), second)

    assert steps.counts(key) == {"validate": 1, "charge": 4, "reserve_stock": 1, "confirm": 1}
    [request] = _requests(charge.process_id)
    assert request.status == "sent" and request.sent_by
    assert not request.sent_by.endswith(f":{os.getpid()}")  # the worker delivered it, not here
    assert flow_tracker.health().pending_deliveries == {}


def _named(worker: list[str], name: str) -> list[str]:
    """The Celery worker command with its own node name (two workers on one host)."""
    args = list(worker)
    args[args.index("-n") + 1] = f"{name}@%h"
    return args


def test_two_celery_workers_racing_to_deliver_pending_retries_publish_each_once(
    tracking: str, tmp_path: Path
) -> None:
    keys = [f"race{i}-{uuid.uuid4().hex[:6]}" for i in range(6)]
    runs = _failed_runs("celery", tracking, keys, tmp_path / "first.log")
    said = _python(
        tracking,
        "\n".join(f"print(flow_tracker.retry_step({str(r)!r}, 'charge'))" for r in runs),
    )
    assert said.splitlines() == ["waiting for a worker of celery"] * len(runs)

    worker = RIGS["celery"].worker
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    with (
        worker_process(_named(worker, f"race-a-{uuid.uuid4().hex[:4]}"), _env(tracking), logs[0]),
        worker_process(_named(worker, f"race-b-{uuid.uuid4().hex[:4]}"), _env(tracking), logs[1]),
    ):
        _wait_for("both workers to deliver every retry", lambda: _completed(runs), *logs)

    for key in keys:
        assert steps.counts(key) == {"validate": 1, "charge": 4, "reserve_stock": 1, "confirm": 1}
    for run in runs:
        charge = flow_tracker.get_workflow(run).steps["charge"].process_id
        assert charge is not None
        [request] = _requests(charge)
        # Claimed once and sent once: no second publish by the other worker.
        assert (request.status, request.attempts) == ("sent", 1), request


def _lost_rq_job(queue: str, key: str) -> uuid.UUID:
    """A lost RQ job of ``delivery_jobs.count(key)`` on ``queue``, as the reaper leaves one."""
    store = runtime.store()
    store.ensure_schema()
    process_id = uuid.uuid4()
    with store.engine.begin() as conn:
        now = database_now(conn)
        conn.execute(
            insert(processes).values(
                id=process_id,
                name="tests.integrations.delivery_jobs.count",
                category="jobs",
                status="lost",
                created_at=now,
                finished_at=now,
                job_system="rq",
                job_id=uuid.uuid4().hex,
                queue=queue,
                job_payload={
                    "func": "tests.integrations.delivery_jobs.count",
                    "args": [key],
                    "kwargs": {},
                    "queue": queue,
                },
            )
        )
    return process_id


def test_a_requeue_cut_off_from_its_broker_stays_lost_and_pending_until_a_worker_sends_it_once(
    tracking: str, tmp_path: Path
) -> None:
    proxy = TcpProxy("127.0.0.1", 6379)  # not started: the broker is cut
    queue, key = f"ft-delivery-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex[:8]
    lost = _lost_rq_job(queue, key)

    # A process with the integration installed tries to publish: the broker is away.
    said = _python(
        tracking,
        "from redis import Redis\n"
        "from flow_tracker.integrations import rq as ft_rq\n"
        f"ft_rq.install(connection=Redis(port={proxy.port}, socket_connect_timeout=2))\n"
        f"[result] = flow_tracker.requeue([{str(lost)!r}])\n"
        "print(result.outcome)\nprint(result.message)",
    )
    outcome, message = said.splitlines()
    assert outcome == "waiting"
    assert message.startswith("waiting for a worker of rq (publishing here failed: ")

    # The job stays lost, found and counted; the request waits with the broker's error.
    assert requeue_candidates(Status.LOST) == [lost]
    health = flow_tracker.health()
    assert (health.lost, health.healthy, health.pending_deliveries) == (1, False, {"rq": 1})
    [request] = _requests(lost)
    assert request.status == "pending" and "onnect" in (request.last_error or "")
    again = _cli(tracking, "requeue", str(lost))
    assert again.returncode != 0
    assert f"{lost}  waiting for a worker of rq" in again.stdout
    assert "0 of 1 sent" in again.stdout

    proxy.start()  # the cut ends; a worker reaching Redis through it delivers the request
    try:
        log = tmp_path / "worker.log"
        url = f"redis://127.0.0.1:{proxy.port}/12"
        worker = ["rq", "worker", "-c", "tests.integrations.rq_settings", "--url", url, queue]
        with worker_process(worker, _env(tracking), log):
            _wait_for("the requeued job to run", lambda: delivery_jobs.runs(key) >= 1, log)
            _wait_for(
                "the requeue to be recorded as sent",
                lambda: requeue_candidates(Status.LOST) == [],
                log,
            )
    finally:
        proxy.stop()

    assert delivery_jobs.runs(key) == 1
    [request] = _requests(lost)
    assert request.status == "sent" and request.sent_by
    health = flow_tracker.health()
    assert (health.lost, health.pending_deliveries) == (0, {})
    after = _cli(tracking, "requeue", str(lost))
    assert after.returncode == 0, after.stdout + after.stderr
    assert "sent before" in after.stdout and "1 of 1 sent" in after.stdout
