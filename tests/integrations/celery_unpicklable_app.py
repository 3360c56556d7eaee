"""A Celery app whose task fails with an exception that cannot be pickled.

Celery stores such an exception as ``UnpickleableExceptionWrapper``; run by a real
worker in ``test_celery.py`` to check the process keeps the task's own class and
message.
"""

from __future__ import annotations

import os
import threading

from celery import Celery

from flow_tracker.integrations import celery as ft_celery

app = Celery(
    "ft_unpicklable_tests",
    broker=os.environ.get("FT_TEST_BROKER", "redis://127.0.0.1:6379/14"),
    backend=os.environ.get("FT_TEST_BACKEND", "redis://127.0.0.1:6379/14"),
)
app.conf.update(broker_connection_retry_on_startup=True, task_default_queue="ft-default")
ft_celery.install(app)


class LedgerLockedError(Exception):
    """Carries the lock it found held: pickling it fails, as with many client errors."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


@app.task(shared=False)
def post_to_ledger(entry: int) -> None:
    """Fails with :class:`LedgerLockedError`."""
    raise LedgerLockedError(f"ledger entry {entry} is locked by another posting")
