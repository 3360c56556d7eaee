"""A tracking database with a known set of processes, and the dashboard app on top of it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from starlette.testclient import TestClient

import flow_tracker
from flow_tracker.heartbeat import HEARTBEAT
from flow_tracker.web import create_app

ORIGIN = "http://testserver"
PINGS = 60


@dataclass(frozen=True)
class Sample:
    """Ids of the recorded sample processes."""

    url: str
    imported: str
    charged: str
    running: str


class CardDeclined(Exception):
    """The error of the failing sample process."""


def record_sample() -> tuple[str, str, str]:
    """Record: one nested import, one failure, one unfinished job, and PINGS quick pings."""
    with flow_tracker.track(
        "ImportOrders", category="jobs", metadata={"tenant": "acme", "user_id": 42}
    ) as tracker:
        tracker.debug("debug line")
        tracker.info("Import started", data={"rows": 3})
        with tracker.flow("download") as download:
            with download.flow("fetch orders.csv"):
                flow_tracker.log("fetched", level="info")
        with tracker.flow("store") as store:
            store.warning("one row skipped")
        imported = str(tracker.process_id)
    with contextlib.suppress(CardDeclined):
        with flow_tracker.track("ChargeCard", category="billing") as tracker:
            charged = str(tracker.process_id)
            with tracker.flow("call_gateway"):
                raise CardDeclined("card 4242 declined")
    unfinished = flow_tracker.start("LongJob", category="jobs")
    unfinished.progress.total = 10
    unfinished.progress.current = 4  # set (not incremented): stored at once, not throttled
    running = str(unfinished.process_id)
    for index in range(PINGS):
        with flow_tracker.track("Ping", category="health", metadata={"n": index}):
            pass
    flow_tracker.flush()
    # The stored sample holds still under the test: the heartbeat thread, started by an
    # earlier test and beating on its own clock, would otherwise stamp LongJob between
    # two reads that are compared.
    HEARTBEAT.clear()
    return imported, charged, running


@pytest.fixture
def sample(tracked: str) -> Sample:
    """The sample processes recorded on both backends."""
    imported, charged, running = record_sample()
    return Sample(tracked, imported, charged, running)


@pytest.fixture
def client(sample: Sample) -> Iterator[TestClient]:
    """A test client of the dashboard on the sample database."""
    app = create_app(sample.url)
    with TestClient(app, base_url=ORIGIN) as test_client:
        yield test_client
    app.state.dashboard.store.dispose()
