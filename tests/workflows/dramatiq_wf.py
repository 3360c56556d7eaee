"""The Dramatiq broker of the workflow tests: ``dramatiq tests.workflows.dramatiq_wf``."""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from flow_tracker.integrations import dramatiq as ft_dramatiq
from tests.workflows import steps

QUEUE = steps.queue_name("dramatiq")
broker = RedisBroker(  # type: ignore[no-untyped-call]
    url=steps.REDIS_URL,
    heartbeat_timeout=int(os.environ.get("FT_TEST_DRAMATIQ_HEARTBEAT_TIMEOUT_MS", "60000")),
)
dramatiq.set_broker(broker)
ft_dramatiq.install(broker)
WORKFLOWS = steps.declare("dramatiq", QUEUE)
