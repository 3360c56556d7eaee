"""Settings for ``rq worker -c benchmarks.apps.rq_settings``: installs tracking."""

from __future__ import annotations

import os

from flow_tracker.integrations import rq as ft_rq

REDIS_URL = os.environ.get("FT_BENCH_REDIS", "redis://127.0.0.1:6379/10")
ft_rq.install()
