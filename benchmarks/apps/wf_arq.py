"""arq side of the workflow benchmark: a worker that runs workflow steps (arq has no chaining)."""

from __future__ import annotations

from arq.connections import RedisSettings

from benchmarks.apps import wf_marks
from benchmarks.apps.wf_shapes import chain_workflow
from flow_tracker.integrations import arq as ft_arq

QUEUE = "ft-wf-bench-arq"


class WorkerSettings:
    """``arq benchmarks.apps.wf_arq.WorkerSettings``: install() adds the step function."""

    functions: list[object] = []
    redis_settings = RedisSettings.from_dsn(wf_marks.REDIS_URL)
    queue_name = QUEUE
    max_jobs = 2
    poll_delay = 0.01  # arq polls Redis (default 0.5 s): a hand-off waits for the next poll


ft_arq.install(WorkerSettings)  # in the benchmark too: steps are sent with these settings
CHAIN_WF = chain_workflow("arq", QUEUE)
