"""Locks across real processes: a race for keys, a killed holder, a paused holder."""

from __future__ import annotations

import itertools
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import psycopg
import pytest

import flow_tracker
from flow_tracker import LockConflictError
from flow_tracker.locks import held_locks

REPO = Path(__file__).resolve().parents[1]

# Races real processes for one lock: the full run, not the fast lane.
pytestmark = pytest.mark.slow


def child(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.lock_child", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def wait_for(path: Path, text: str, seconds: float = 30) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists() and text in (content := path.read_text()):
            return content
        time.sleep(0.02)
    raise AssertionError(f"{path} never said {text!r}")


def _inside_a_write(url: str) -> bool:
    """Whether someone holds a write on the lock row (SQLite: on the file) right now."""
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.split("///", 1)[1], timeout=0.05, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return False
        except sqlite3.OperationalError:
            return True
        finally:
            conn.close()
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as pg:
        try:
            pg.execute(
                "SELECT 1 FROM flow_tracker_locks WHERE name = 'victim' AND key = 'k' "
                "FOR UPDATE NOWAIT"
            )
            return False
        except psycopg.errors.LockNotAvailable:
            return True


def pause_between_writes(proc: subprocess.Popen[bytes], url: str) -> None:
    """SIGSTOP ``proc`` at a moment it is not inside a write transaction.

    Its heartbeat renews the lease every ttl/3 in a short transaction; a process
    paused inside one blocks every other writer of that row (of the whole file on
    SQLite) until it resumes. That is true, but not what these tests are about:
    they pause a holder between its writes, as a GC pause or SIGSTOP usually does.
    """
    for _ in range(200):
        os.kill(proc.pid, signal.SIGSTOP)
        if not _inside_a_write(url):
            return
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.02)
    raise AssertionError("the holder was inside a write at every one of 200 tries")


def test_eight_processes_racing_for_fifty_keys_never_hold_one_key_at_once(
    tracked: str, tmp_path: Path
) -> None:
    rounds = 60
    files = [tmp_path / f"race-{i}.txt" for i in range(8)]
    procs = [child("race", tracked, str(f), str(rounds), "50") for f in files]
    for proc in procs:
        assert proc.wait(timeout=300) == 0
    intervals: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for file in files:
        lines = file.read_text().splitlines()
        assert len(lines) == rounds
        for line in lines:
            key, begun, ended = line.split()
            intervals[key].append((int(begun), int(ended)))
    assert sum(len(v) for v in intervals.values()) == 8 * rounds
    for key, spans in intervals.items():
        spans.sort()
        for (_, previous_end), (next_start, _) in itertools.pairwise(spans):
            assert next_start >= previous_end, f"key {key} held twice at once"
    assert held_locks() == []


def test_a_killed_holder_frees_its_key_after_its_lease(tracked: str, tmp_path: Path) -> None:
    out = tmp_path / "holder.txt"
    proc = child("hold", tracked, str(out), "1.0")
    wait_for(out, "held")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with pytest.raises(LockConflictError):  # still within its lease
        with flow_tracker.exclusive("victim", key="k"):
            pass
    # Once its lease (1 s) runs out, nobody renews it: a waiting taker gets the key.
    with flow_tracker.exclusive("victim", key="k", on_conflict="wait", timeout=10) as lease:
        assert lease.fence == 2


def test_a_paused_holder_woken_past_its_lease_cannot_free_the_new_holders_lock(
    tracked: str, tmp_path: Path
) -> None:
    out = tmp_path / "holder.txt"
    proc = child("hold", tracked, str(out), "1.0")
    wait_for(out, "held 1")
    pause_between_writes(proc, tracked)
    try:
        with flow_tracker.exclusive("victim", key="k", on_conflict="wait", timeout=10) as lease:
            assert lease.fence == 2
            os.kill(proc.pid, signal.SIGCONT)
            time.sleep(0.5)  # its heartbeat tries to renew: refused
            out.with_suffix(".go").touch()
            report = wait_for(out, "released")
            assert "released False lost True" in report
            (held,) = held_locks()
            assert (held.holder, held.fence) == (lease.holder, 2)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.wait(timeout=30)
    assert held_locks() == []
