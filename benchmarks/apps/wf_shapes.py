"""The workflows the benchmark measures, declared on any queue system."""

from __future__ import annotations

from typing import Any

import flow_tracker
from benchmarks.apps import wf_marks

CHAIN = 20
LEAVES = 500


def chain_workflow(
    system: str, queue_name: str, length: int = CHAIN, name: str | None = None
) -> flow_tracker.Workflow:
    """A chain of ``length`` trivial steps on ``system``."""
    wf = flow_tracker.workflow(name or f"bench_chain_{system}", queue=system, queue_name=queue_name)
    for i in range(length):
        parents = [f"s{i - 1}"] if i else []
        wf.step(name=f"s{i}", depends_on=parents)(
            lambda context, i=i, **_: wf_marks.step(context["key"], i)
        )
    return wf


def fan_in_workflow(
    system: str, queue_name: str, leaves: int = LEAVES, name: str | None = None
) -> flow_tracker.Workflow:
    """A root, ``leaves`` trivial steps after it, and a join after them all."""
    wf = flow_tracker.workflow(
        name or f"bench_fan_in_{system}", queue=system, queue_name=queue_name
    )
    wf.step(name="root")(lambda context: 0)
    names = [f"l{i}" for i in range(leaves)]
    for i, name in enumerate(names):
        wf.step(name=name, depends_on=["root"])(
            lambda context, root, i=i: wf_marks.step(context["key"], i + 1)
        )

    def fan_join(context: dict[str, Any], **parents: Any) -> int:
        wf_marks.started(context["key"], leaves + 1)
        wf_marks.count(context["key"])
        return len(parents)

    wf.step(name="join", depends_on=names)(fan_join)
    return wf


def logging_chain(length: int, name: str) -> flow_tracker.Workflow:
    """A chain of ``length`` steps on the in-process pool, each writing one log line.

    What Prefect's measured task does too (a line through its run logger).
    """
    wf = flow_tracker.workflow(name)
    for i in range(length):
        parents = [f"s{i - 1}"] if i else []

        def step(context: dict[str, Any], i: int = i, **_: Any) -> int:
            flow_tracker.log("step", data={"i": i})
            return i

        wf.step(name=f"s{i}", depends_on=parents)(step)
    return wf
