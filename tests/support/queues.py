"""Tests that stand for a process with no queue installed: only the in-process pool left."""

from __future__ import annotations

import pytest

from flow_tracker import job_systems
from flow_tracker.workflows import threads


def only_the_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget every queue installed in this process but ``threads`` (restored after the test)."""
    pool = job_systems.get(threads.SYSTEM)
    monkeypatch.setattr(job_systems, "_systems", {} if pool is None else {pool.name: pool})
