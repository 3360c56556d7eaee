"""The Celery app workflow tests run in real workers (``celery -A tests.workflows.celery_wf``)."""

from __future__ import annotations

import os

from celery import Celery

from flow_tracker.integrations import celery as ft_celery
from tests.workflows import steps

QUEUE = steps.queue_name("celery")
app = Celery("ft_wf", broker=os.environ.get("FT_TEST_WF_BROKER", "redis://127.0.0.1:6379/12"))
app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    task_default_queue=QUEUE,
    broker_transport_options={"visibility_timeout": 30},
)
ft_celery.install(app)
WORKFLOWS = steps.declare("celery", QUEUE)
