"""A Dramatiq module whose actor declares a bad critical section.

Importing it raises :class:`flow_tracker.UsageError` from the ``@dramatiq.actor``
decorator, so a ``dramatiq`` worker pointed at it refuses to start and says why.
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from flow_tracker.integrations import dramatiq as ft_dramatiq

broker = RedisBroker(url=os.environ.get("FT_TEST_DRAMATIQ_REDIS", "redis://127.0.0.1:6379/11"))
dramatiq.set_broker(broker)
ft_dramatiq.install(broker)


@dramatiq.actor(flow_tracker_exclusive={"name": "ft-test-charge", "key": "{account}"})
def charge(user_id: str) -> None:
    """Its key template names an argument the actor does not have."""
