"""An RQ job module whose job declares a bad critical section.

Importing it raises :class:`flow_tracker.UsageError` from the decorator, so a
worker cannot load the job: it fails without running, and says why.
"""

from __future__ import annotations

import os

from redis import Redis

import flow_tracker


@flow_tracker.exclusive("ft-test-charge", key="{account}", on_conflict="skip")
def charge(user_id: str) -> str:
    """Its key template names an argument the job does not have."""
    Redis.from_url(os.environ["FT_TEST_REDIS"]).incr(f"ft-test-ran:rq-charge:{user_id}")
    return f"charged {user_id}"
