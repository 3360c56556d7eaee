"""Celery app of the queue benchmark."""

from __future__ import annotations

import os

from celery import Celery

from benchmarks.apps import work
from flow_tracker.integrations import celery as ft_celery

app = Celery("ft_bench", broker=os.environ.get("FT_BENCH_REDIS", "redis://127.0.0.1:6379/10"))
app.conf.update(worker_prefetch_multiplier=16, broker_connection_retry_on_startup=True)
ft_celery.install(app)
# The alternatives the benchmark compares with (``benchmarks alternatives``): Celery's
# own database result backend keeping each task's state (STARTED before the task,
# SUCCESS after), and the task events Flower reads.
if backend := os.environ.get("FT_BENCH_CELERY_BACKEND"):
    app.conf.update(result_backend=backend, task_track_started=True)
if os.environ.get("FT_BENCH_CELERY_EVENTS"):
    app.conf.update(worker_send_task_events=True)
if os.environ.get("FT_BENCH_FLOOR"):
    from celery import signals

    from benchmarks.apps import floor

    @signals.task_prerun.connect(weak=False)
    def _floor_start(task_id: str, **_: object) -> None:
        floor.mark(task_id, "running")

    @signals.task_postrun.connect(weak=False)
    def _floor_end(task_id: str, **_: object) -> None:
        floor.mark(task_id, "completed")


@app.task(name="bench.trivial")
def trivial() -> None:
    work.trivial()


@app.task(name="bench.busy")
def busy() -> None:
    work.busy()
