"""Workflows on Celery, RQ and Dramatiq with real worker processes, on PostgreSQL.

Every step counts its runs in Redis (see ``steps.py``): however the steps race,
retry, fail, or lose their worker to SIGKILL, each completed step ran once.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

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
            "ft-wf-celery",
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
            "ft-wf-rq",
        ],
    ),
    "dramatiq": Rig(
        "dramatiq",
        "tests.workflows.dramatiq_wf",
        ["dramatiq", "tests.workflows.dramatiq_wf", "-p", "2", "-t", "2", "-Q", "ft-wf-dramatiq"],
    ),
}


@pytest.fixture(params=sorted(RIGS))
def rig(request: pytest.FixtureRequest, pg_server_url: str) -> Iterator[Rig]:
    """One queue system on a clean Redis database and an empty PostgreSQL tracking database."""
    require_service("127.0.0.1", 6379, "Redis")
    from tests.conftest import _truncate

    redis.Redis.from_url(steps.REDIS_URL).flushdb()
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
    return {**WORKER_ENV, "FLOW_TRACKER_DATABASE_URL": url, "FT_TEST_WF_REDIS": steps.REDIS_URL}


def _wait_all(runs: list[Any], log: Path) -> list[flow_tracker.WorkflowStatus]:
    deadline = time.monotonic() + RUNS_DONE_S
    done = []
    for run in runs:
        try:
            done.append(run.wait(max(1.0, deadline - time.monotonic())))
        except TimeoutError:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            status = flow_tracker.get_workflow(run.id)
            steps_now = {name: s.status for name, s in status.steps.items()}
            raise AssertionError(f"run {run.id} not finished: {steps_now}\n{tail}") from None
    return done


def test_runs_complete_with_every_step_run_once(
    rig: Rig, pg_server_url: str, tmp_path: Path
) -> None:
    wfs = rig.workflows()
    log = tmp_path / "worker.log"
    keys: dict[uuid.UUID, tuple[str, str, int]] = {}
    with worker_process(rig.worker, _env(pg_server_url), log):
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
        done = _wait_all(runs, log)
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
    assert step.status == "completed" and step.queue == f"ft-wf-{rig.system}"


def test_a_failure_blocks_only_its_dependents_and_retry_step_resumes_the_run(
    rig: Rig, pg_server_url: str, tmp_path: Path
) -> None:
    wfs = rig.workflows()
    log = tmp_path / "worker.log"
    key = f"fail-{uuid.uuid4().hex[:6]}"
    steps.set_fails(key, 99)
    with worker_process(rig.worker, _env(pg_server_url), log):
        run = wfs["orders"].run(context={"key": key})
        (status,) = _wait_all([run], log)
        assert status.status == "failed" and status.failed_step == "charge"
        assert status.steps["charge"].attempts == 3  # the first and two retries
        assert status.steps["reserve_stock"].status == "completed"
        assert status.steps["confirm"].blocked_by == "charge"
        steps.set_fails(key, 0)
        flow_tracker.retry_step(run.id, "charge", by="ops", reason="gateway fixed")
        (status,) = _wait_all([run], log)
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
    with worker_process(rig.worker, _env(pg_server_url), second):
        (status,) = _wait_all([run], second)
    assert status.status == "completed"
    assert steps.counts(key) == {"slow": 2, "after": 1}
    assert status.steps["slow"].attempts == 2
