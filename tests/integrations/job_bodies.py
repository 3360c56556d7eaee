"""What the test jobs do, shared by the Celery, RQ and Dramatiq test apps."""

from __future__ import annotations

import time

import flow_tracker


def my_job(i: int) -> int:
    """The Ruby gem's MyJob in Python: load_user, send_email, update_stats."""
    with flow_tracker.flow("load_user"):
        flow_tracker.log("loading", data={"user_id": i})
    with flow_tracker.flow("send_email") as flow:
        flow.info(f"Sending email to user{i}@example.com")
    with flow_tracker.flow("update_stats"):
        pass
    return i * 2


def failing_job(i: int) -> None:
    """Fails with the job's own error inside a flow."""
    with flow_tracker.flow("doomed"):
        raise ValueError(f"bad input {i}")


def progress_job(steps: int) -> str:
    """Reports progress while it runs, for readers in other processes."""
    tracker = flow_tracker.current()
    assert tracker is not None
    tracker.progress.total = steps
    for _ in range(steps):
        time.sleep(0.1)
        tracker.progress.increment()
    return "done"


def sleepy_job(i: int, seconds: float) -> int:
    """Long enough to be running when its worker is killed."""
    with flow_tracker.flow("work") as flow:
        flow.info("working", data={"i": i})
        time.sleep(seconds)
    return i


def charge(user_id: str) -> str:
    """What a job guarded by a critical section does."""
    flow_tracker.log("charging", data={"user_id": user_id})
    return f"charged {user_id}"


def guarded_block(user_id: str) -> str:
    """A critical section as a block: skipped while another holder has the key."""
    with flow_tracker.exclusive("ft-test-charge", key=user_id, on_conflict="skip"):
        return charge(user_id)
