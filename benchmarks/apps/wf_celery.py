"""Celery side of the workflow benchmark: native tasks for chains and chords, and workflows."""

from __future__ import annotations

from typing import Any

from celery import Celery

from benchmarks.apps import wf_marks
from benchmarks.apps.wf_shapes import LEAVES, chain_workflow, fan_in_workflow
from flow_tracker.integrations import celery as ft_celery

QUEUE = "ft-wf-bench"
app = Celery("ft_wf_bench", broker=wf_marks.REDIS_URL, backend=wf_marks.REDIS_URL)
app.conf.update(
    worker_prefetch_multiplier=4,
    broker_connection_retry_on_startup=True,
    task_default_queue=QUEUE,
    result_expires=600,
)
ft_celery.install(app)


@app.task(name="wfb.step")
def step(key: str, index: int) -> int:
    return wf_marks.step(key, index)


@app.task(name="wfb.join")
def join(results: Any, key: str) -> int:
    wf_marks.started(key, LEAVES + 1)
    wf_marks.count(key)
    return len(results)


CHAIN_WF = chain_workflow("celery", QUEUE)
FAN_IN_WF = fan_in_workflow("celery", QUEUE)
