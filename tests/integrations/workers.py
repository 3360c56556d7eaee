"""Helpers for integration tests: services, real worker subprocesses, waiting on rows."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

import flow_tracker
from flow_tracker import Status
from flow_tracker.records import ProcessRecord
from tests.conftest import IN_CI

REPO = Path(__file__).resolve().parents[2]
FINAL = {Status.COMPLETED, Status.FAILED, Status.SKIPPED, Status.CANCELLED, Status.LOST}


def require_service(host: str, port: int, name: str) -> None:
    """Skip (or fail in CI) when nothing listens on ``host:port``."""
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError as exc:
        reason = f"{name} not reachable at {host}:{port}: {exc}"
        if IN_CI:
            pytest.fail(f"{reason} (CI=true: service-backed tests must run)")
        pytest.skip(reason)


@contextmanager
def worker_process(
    args: Sequence[str], env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a worker command until the block ends, then stop it and every process it made.

    ``args`` starting with ``-m`` run with this interpreter; otherwise ``args[0]`` is
    a console script of this environment (``rq``, ``dramatiq``). The worker runs in
    a session of its own (the test may kill its group) and is sent SIGTERM if this
    process dies first (see ``tests.support.die_with_parent``): a killed test run
    leaves no worker behind.
    """
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **env}
    command = [sys.executable, *args] if args[0] == "-m" else [bin_path(args[0]), *args[1:]]
    guard = [sys.executable, "-m", "tests.support.die_with_parent", str(os.getpid())]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*guard, *command],
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            start_new_session=True,
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                # A child that outlived its parent (a pool process, a work-horse) is
                # still in the group: it must not take the next test's jobs.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)


def bin_path(script: str) -> str:
    """The path of a console script installed beside this interpreter."""
    return str(Path(sys.executable).with_name(script))


def wait_until_final(
    job_ids: Sequence[str], log: Path, seconds: float = 180
) -> dict[str, ProcessRecord]:
    """Poll until every job's process is in a final state; return them by job id."""
    deadline = time.monotonic() + seconds
    wanted = set(job_ids)
    while True:
        found: dict[str, ProcessRecord] = {}
        cursor = None
        while True:
            page = flow_tracker.list_processes(limit=500, cursor=cursor)
            for p in page:
                if p.job_id in wanted and p.status in FINAL:
                    found[p.job_id] = p
            cursor = page.next_cursor
            if cursor is None:
                break
        if len(found) == len(wanted):
            return found
        if time.monotonic() > deadline:
            missing = sorted(wanted - set(found))[:5]
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise AssertionError(
                f"{len(wanted) - len(found)} jobs not final, e.g. {missing}\n{tail}"
            )
        time.sleep(0.5)


EXPECTED_OUTCOMES = {
    # kind -> (final status, attempts, error class)
    "succeed": (Status.COMPLETED, 1, None),
    "fail": (Status.FAILED, 1, "ValueError"),
    "flaky": (Status.COMPLETED, 2, None),
    "always_fail": (Status.FAILED, 3, "ConnectionError"),
}


def check_job_mix(
    kinds: dict[str, str], log: Path, job_system: str, retried_flow_status: Status
) -> None:
    """Every job has exactly one row with the right status, attempts, flows, logs and error.

    Args:
        kinds: the kind of each job (see :data:`EXPECTED_OUTCOMES`) by job id.
        log: the worker's log, shown when jobs do not finish.
        job_system: celery, rq or dramatiq.
        retried_flow_status: how the flow of an attempt that asked for a retry ends
            (``retrying`` when the queue raises its own Retry, else ``failed``).
    """
    from flow_tracker.ids import process_id_for

    found = wait_until_final(list(kinds), log)
    rows = Counter(p.job_id for p in flow_tracker.list_processes(limit=500) if p.job_id in kinds)
    assert len(rows) == len(kinds) and set(rows.values()) == {1}, "missing or duplicated rows"
    for job_id, kind in kinds.items():
        status, attempts, error = EXPECTED_OUTCOMES[kind]
        record = flow_tracker.get_process(found[job_id].id)
        assert record is not None
        assert (record.status, record.attempt) == (status, attempts), (kind, record)
        assert record.id == process_id_for(job_system, job_id)
        assert record.job_system == job_system
        assert record.queued_at is not None and record.started_at is not None
        assert record.host and record.pid and record.queue
        if error:
            assert record.error is not None and record.error.type == error, (kind, record.error)
        else:
            assert record.error is None, (kind, record.error)
        flows = list(record.all_flows())
        if kind == "succeed":
            (i,) = record.job_args["args"]
            assert [f.name for f in flows] == ["load_user", "send_email", "update_stats"]
            assert flows[0].logs[0].data == {"user_id": i}
            assert flows[1].logs[0].message == f"Sending email to user{i}@example.com"
        if kind == "flaky":
            assert [(f.attempt, f.status) for f in flows] == [
                (1, retried_flow_status),
                (2, Status.COMPLETED),
            ]
        if kind == "always_fail":
            assert [f.attempt for f in flows] == [1, 2, 3]


def poll_progress(job_id: str, seconds: float = 60) -> list[float]:
    """Read a job's progress by its job id until it completes; return the partial values seen."""
    seen: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        status = flow_tracker.get_status(job_id)
        assert status is not None
        if status.is_running and 0 < status.progress < 1:
            seen.append(status.progress)
        if status.is_completed:
            return seen
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not complete; progress seen: {seen}")


def check_lock_skips(found: dict[str, ProcessRecord], skipped: Sequence[str], ran: str) -> None:
    """Jobs refused their critical section end ``skipped`` once, with the reason; ``ran`` ran."""
    for job_id in skipped:
        record = found[job_id]
        assert record.status is Status.SKIPPED, (record.status, record.error)
        assert record.attempt == 1  # a skip is not a failure: nothing was retried
        assert "'ft-test-charge'" in record.metadata["skip_reason"]
        assert "is held" in record.metadata["skip_reason"]
    assert found[ran].status is Status.COMPLETED
