"""Huey instance and tasks of the queue benchmark, run by ``huey_consumer``."""

from __future__ import annotations

import os

from huey import RedisHuey

from benchmarks.apps import work
from flow_tracker.integrations import huey as ft_huey

huey = RedisHuey("ft_bench", url=os.environ.get("FT_BENCH_REDIS", "redis://127.0.0.1:6379/10"))
ft_huey.install(huey)


@huey.task()
def trivial() -> None:
    work.trivial()


@huey.task()
def busy() -> None:
    work.busy()
