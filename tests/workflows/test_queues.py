"""Workflows on Celery, RQ and Dramatiq with real worker processes, on PostgreSQL.

Every step counts its runs in Redis (see ``steps.py``): however the steps race,
retry, fail, or lose their worker to SIGKILL, each completed step ran once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import flow_tracker
from tests.integrations.workers import require_service, worker_process
from tests.workflows import steps
from tests.workflows.helpers import process

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

LOST_AFTER = 3.0
WORKER_ENV = {"FLOW_TRACKER_HEARTBEAT_INTERVAL": "0.5", "FLOW_TRACKER_LOST_AFTER": str(LOST_AFTER)}
# Deadlines for a busy 2-core machine; an idle one finishes each in a few seconds.
RUNS_DONE_S = 240.0


@dataclass(frozen=True)
class Rig:
    """How to run one queue system's workers, and its workflows in this process."""

    system: str
    module: str
    worker: list[str]

    def workflows(self) -> dict[str, flow_tracker.Workflow]:
        import importlib

        loaded: dict[str, flow_tracker.Workflow] = importlib.import_module(self.module).WORKFLOWS
        return loaded


RIGS = {
    "celery": Rig(
        "celery",
        "tests.workflows.celery_wf",
        [
            "-m",
            "celery",
            "-A",
            "tests.workflows.celery_wf",
            "worker",
            "-P",
            "prefork",
            "-c",
            "2",
            "-Q",
            steps.queue_name("celery"),
            "-l",
            "warning",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-n",
            f"wf-{uuid.uuid4().hex[:6]}@%h",
        ],
    ),
    "rq": Rig(
        "rq",
        "tests.workflows.rq_wf",
        [
            "rq",
            "worker",
            "--with-scheduler",
            "-c",
            "tests.integrations.rq_settings",
            "--url",
            steps.REDIS_URL,
            "-w",
            "rq.worker.SimpleWorker",
            "--logging_level",
            "WARNING",
            steps.queue_name("rq"),
        ],
    ),
    "dramatiq": Rig(
        "dramatiq",
        "tests.workflows.dramatiq_wf",
        [
            "dramatiq",
            "tests.workflows.dramatiq_wf",
            "-p",
            "2",
            "-t",
            "2",
            "-Q",
            steps.queue_name("dramatiq"),
        ],
    ),
}


@pytest.fixture(params=sorted(RIGS))
def rig(request: pytest.FixtureRequest, pg_server_url: str) -> Iterator[Rig]:
    """One queue system on this run's emptied queues and an empty PostgreSQL tracking database.

    Only this run's queues are emptied: a flush of the whole Redis database would
    take the messages of another run using it at the same time.
    """
    require_service("127.0.0.1", 6379, "Redis")
    from tests.conftest import _truncate

    steps.clear_queues()
    _truncate(pg_server_url)
    flow_tracker.configure(
        database_url=pg_server_url,
        log_to_stdlib=False,
        lost_after=LOST_AFTER,
        heartbeat_interval=0.5,
    )
    yield RIGS[request.param]
    flow_tracker.reset()


def _env(url: str) -> dict[str, str]:
    return {
        **WORKER_ENV,
        "FLOW_TRACKER_DATABASE_URL": url,
        "FT_TEST_WF_REDIS": steps.REDIS_URL,
        "FT_TEST_WF_RUN": steps.RUN,  # the queues it consumes are this run's
    }


def _wait_all(
    runs: list[Any], log: Path, worker: subprocess.Popen[bytes] | None = None
) -> list[flow_tracker.WorkflowStatus]:
    """Every run's status once all have ended, within one deadline for all of them.

    Past it, the error says what was still waited for: each unfinished run's
    steps by state (with their attempts), what this run's queues hold in Redis
    (a step queued in the database with no message anywhere was lost or taken
    by a foreign worker; messages still waiting mean slow workers), whether the
    worker is alive, and the end of its log.
    """
    deadline = time.monotonic() + RUNS_DONE_S
    done = []
    for run in runs:
        try:
            done.append(run.wait(max(1.0, deadline - time.monotonic())))
        except TimeoutError:
            raise AssertionError(_still_waited_for(runs, log, worker)) from None
    return done


def _still_waited_for(runs: list[Any], log: Path, worker: subprocess.Popen[bytes] | None) -> str:
    lines = [f"waited {RUNS_DONE_S:g} s for {len(runs)} runs; still running:"]
    for run in runs:
        status = flow_tracker.get_workflow(run.id)
        if status.finished:
            continue
        by_state: dict[str, list[str]] = {}
        for step in status.steps.values():
            by_state.setdefault(step.status, []).append(f"{step.name} ({step.attempts})")
        states = "; ".join(f"{state}: {', '.join(names)}" for state, names in by_state.items())
        lines.append(f"  run {run.id} ({status.name}) - steps by state (attempts): {states}")
    lines.append(f"this run's queues in Redis: {steps.queue_contents() or 'empty'}")
    if worker is not None:
        code = worker.poll()
        lines.append("worker: alive" if code is None else f"worker: exited with {code}")
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"
    lines.append(f"worker log, last lines:\n{tail}")
    return "\n".join(lines)


def test_runs_complete_with_every_step_run_once(
    rig: Rig, pg_server_url: str, tmp_path: Path
) -> None:
    wfs = rig.workflows()
    log = tmp_path / "worker.log"
    keys: dict[uuid.UUID, tuple[str, str, int]] = {}
    with worker_process(rig.worker, _env(pg_server_url), log) as worker:
        runs = []
        for i in range(12):
            key, fails = f"o{i}-{uuid.uuid4().hex[:6]}", 1 if i % 3 == 0 else 0
            run = wfs["orders"].run(context={"key": key, "fails": fails})
            keys[run.id] = ("orders", key, fails)
            runs.append(run)
        for i in range(4):
            key = f"f{i}-{uuid.uuid4().hex[:6]}"
            run = wfs["fan_in"].run(context={"key": key})
            keys[run.id] = ("fan_in", key, 0)
            runs.append(run)
        done = _wait_all(runs, log, worker)
    for status in done:
        kind, key, fails = keys[status.id]
        assert status.status == "completed", (
            kind,
            {name: (s.status, s.attempts, s.error) for name, s in status.steps.items()},
        )
        ran = steps.counts(key)
        if kind == "orders":
            assert ran == {"validate": 1, "charge": 1 + fails, "reserve_stock": 1, "confirm": 1}
            assert status.steps["charge"].attempts == 1 + fails
            assert status.steps["confirm"].result == [{"paid": 42}, "reserved"]
        else:
            assert set(ran.values()) == {1} and len(ran) == steps.LEAVES + 2, ran
            assert status.steps["join"].result == sum(range(1, 1 + 1)) * steps.LEAVES
    flow_tracker.flush()
    step = process(done[0].steps["charge"].process_id)
    assert step.job_system == rig.system and step.parent_process_id == done[0].id
    assert step.status == "completed" and step.queue == steps.queue_name(rig.system)


def test_a_failure_blocks_only_its_dependents_and_retry_step_resumes_the_run(
    rig: Rig, pg_server_url: str, tmp_path: Path
) -> None:
    wfs = rig.workflows()
    log = tmp_path / "worker.log"
    key = f"fail-{uuid.uuid4().hex[:6]}"
    steps.set_fails(key, 99)
    with worker_process(rig.worker, _env(pg_server_url), log) as worker:
        run = wfs["orders"].run(context={"key": key})
        (status,) = _wait_all([run], log, worker)
        assert status.status == "failed" and status.failed_step == "charge"
        assert status.steps["charge"].attempts == 3  # the first and two retries
        assert status.steps["reserve_stock"].status == "completed"
        assert status.steps["confirm"].blocked_by == "charge"
        steps.set_fails(key, 0)
        flow_tracker.retry_step(run.id, "charge", by="ops", reason="gateway fixed")
        (status,) = _wait_all([run], log, worker)
    assert status.status == "completed"
    assert steps.counts(key) == {"validate": 1, "charge": 4, "reserve_stock": 1, "confirm": 1}


def test_a_step_whose_worker_is_killed_is_reaped_and_run_again(
    rig: Rig, pg_server_url: str, tmp_path: Path
) -> None:
    wfs = rig.workflows()
    key = f"kill-{uuid.uuid4().hex[:6]}"
    first = tmp_path / "first.log"
    with worker_process(rig.worker, _env(pg_server_url), first) as worker:
        run = wfs["killable"].run(context={"key": key})
        deadline = time.monotonic() + RUNS_DONE_S
        while steps.started_pid(key) is None:
            assert time.monotonic() < deadline, "the slow step never started\n" + first.read_text()
            time.sleep(0.1)
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
    sent = 0
    while sent == 0:  # the reaper finds the silent step and sends it again
        assert time.monotonic() < deadline, "the reaper never sent the lost step again"
        sent = flow_tracker.reap(lost_after=LOST_AFTER).workflow_steps
        time.sleep(0.5)
    history = process(flow_tracker.get_workflow(run.id).steps["slow"].process_id)
    assert "lost" in [t.status for t in history.history]
    second = tmp_path / "second.log"
    with worker_process(rig.worker, _env(pg_server_url), second) as worker:
        (status,) = _wait_all([run], second, worker)
    assert status.status == "completed"
    assert steps.counts(key) == {"slow": 2, "after": 1}
    assert status.steps["slow"].attempts == 2
