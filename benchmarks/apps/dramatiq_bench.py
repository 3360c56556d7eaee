"""Dramatiq broker and actors of the queue benchmark."""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from benchmarks.apps import work
from flow_tracker.integrations import dramatiq as ft_dramatiq

broker = RedisBroker(url=os.environ.get("FT_BENCH_REDIS", "redis://127.0.0.1:6379/10"))
dramatiq.set_broker(broker)
ft_dramatiq.install(broker)


@dramatiq.actor(queue_name="ft-bench", max_retries=0)
def trivial() -> None:
    work.trivial()


@dramatiq.actor(queue_name="ft-bench", max_retries=0)
def busy() -> None:
    work.busy()
