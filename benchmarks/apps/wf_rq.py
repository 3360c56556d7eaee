"""RQ side of the workflow benchmark: a native task for ``depends_on`` chains, and a workflow."""

from __future__ import annotations

from redis import Redis

from benchmarks.apps import wf_marks
from benchmarks.apps.wf_shapes import chain_workflow
from flow_tracker.integrations import rq as ft_rq

QUEUE = "ft-wf-bench-rq"
ft_rq.install(connection=Redis.from_url(wf_marks.REDIS_URL))


def step(key: str, index: int) -> int:
    """The native RQ job of a chain."""
    return wf_marks.step(key, index)


CHAIN_WF = chain_workflow("rq", QUEUE)
