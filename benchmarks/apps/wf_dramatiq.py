"""Dramatiq side of the workflow benchmark: an actor for native pipelines, and a workflow."""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from benchmarks.apps import wf_marks
from benchmarks.apps.wf_shapes import chain_workflow
from flow_tracker.integrations import dramatiq as ft_dramatiq

QUEUE = "ft-wf-bench-dq"
broker = RedisBroker(url=wf_marks.REDIS_URL)
dramatiq.set_broker(broker)
ft_dramatiq.install(broker)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def step(key: str, index: int) -> int:
    """The native actor of a pipeline."""
    return wf_marks.step(key, index)


CHAIN_WF = chain_workflow("dramatiq", QUEUE)
