"""Settings module for ``rq worker -c tests.integrations.rq_settings``: installs tracking."""

from __future__ import annotations

import os

from flow_tracker.integrations import rq as ft_rq

REDIS_URL = os.environ.get("FT_TEST_REDIS", "redis://127.0.0.1:6379/13")
ft_rq.install()

if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # metrics from every forked work-horse
    from flow_tracker.exporters import prometheus as ft_prometheus

    ft_prometheus.install()
