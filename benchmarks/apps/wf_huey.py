"""Huey side of the workflow benchmark: native tasks for a pipeline, and a workflow."""

from __future__ import annotations

from huey import RedisHuey

from benchmarks.apps import wf_marks
from benchmarks.apps.wf_shapes import chain_workflow
from flow_tracker.integrations import huey as ft_huey

huey = RedisHuey("ft_wf_bench_huey", url=wf_marks.REDIS_URL)
ft_huey.install(huey)
QUEUE = huey.name  # Huey has one queue per instance: steps name the instance


@huey.task()
def step(key: str, index: int) -> int:
    """The first native task of a pipeline."""
    return wf_marks.step(key, index)


@huey.task()
def piped(key: str, index: int, previous: int) -> int:
    """A native task after another: a pipeline appends the parent's result to its arguments."""
    return wf_marks.step(key, index)


CHAIN_WF = chain_workflow("huey", QUEUE)
