"""The RQ side of the workflow tests: the worker imports this module by the run's name.

Workers run ``rq worker --with-scheduler -c tests.integrations.rq_settings ft-wf-rq-<run>``;
the work-horse imports this module when it meets a step of its workflows.
"""

from __future__ import annotations

from redis import Redis

from flow_tracker.integrations import rq as ft_rq
from tests.workflows import steps

QUEUE = steps.queue_name("rq")
ft_rq.install(connection=Redis.from_url(steps.REDIS_URL))
WORKFLOWS = steps.declare("rq", QUEUE)
