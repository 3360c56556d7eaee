"""The logging module and flow-tracker: mirroring out, storing in, never looping."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

import flow_tracker
from flow_tracker.integrations import logging as ft_logging


@pytest.fixture
def bridge() -> Iterator[logging.Handler]:
    root = logging.getLogger()
    old_level = root.level
    root.setLevel(logging.DEBUG)
    handler = ft_logging.install(logging.INFO)
    yield handler
    ft_logging.uninstall()
    root.setLevel(old_level)


def test_logging_calls_inside_a_process_are_stored_on_the_current_flow(
    tracked: str, bridge: logging.Handler
) -> None:
    app_log = logging.getLogger("myapp.billing")
    app_log.info("outside any process")
    with flow_tracker.track("bridged") as tracker:
        app_log.info("at process level %s", "ok")
        with tracker.flow("charge"):
            app_log.warning("card declined", extra={"order": 17})
            app_log.debug("below the handler's level")
            try:
                raise ValueError("bad amount")
            except ValueError:
                app_log.exception("charge failed")
    record = flow_tracker.get_process(tracker.process_id)
    assert record is not None
    assert [(e.level, e.message) for e in record.logs] == [("info", "at process level ok")]
    charge = record.flows[0].logs
    assert [(e.level, e.message) for e in charge] == [
        ("warning", "card declined"),
        ("error", "charge failed"),
    ]
    assert charge[0].data["logger"] == "myapp.billing"
    assert charge[0].data["extra"] == {"order": 17}
    assert "ValueError: bad amount" in charge[1].data["exception"]


def test_mirroring_and_bridge_together_store_each_entry_once(
    database_url: str, bridge: logging.Handler, caplog: pytest.LogCaptureFixture
) -> None:
    flow_tracker.configure(database_url=database_url, log_to_stdlib=True)
    caplog.set_level(logging.INFO, logger="flow_tracker")
    with flow_tracker.track("mirrored") as tracker:
        tracker.info("said once", data={"k": 1})
    record = flow_tracker.get_process(tracker.process_id)
    assert record is not None
    assert [e.message for e in record.logs] == ["said once"]
    mirrored = [r for r in caplog.records if r.name == "flow_tracker"]
    assert [r.getMessage() for r in mirrored] == ["[mirrored] said once"]


def test_install_is_idempotent() -> None:
    first = ft_logging.install()
    try:
        assert ft_logging.install() is first
        assert logging.getLogger().handlers.count(first) == 1
    finally:
        ft_logging.uninstall()
    assert first not in logging.getLogger().handlers


def test_install_makes_info_records_of_a_warning_level_root_reach_the_process(
    tracked: str,
) -> None:
    root = logging.getLogger()
    old_level = root.level
    root.setLevel(logging.WARNING)  # Python's default
    ft_logging.install()
    try:
        with flow_tracker.track("info-by-default") as tracker:
            logging.getLogger("myapp").info("stored without setting a level")
    finally:
        ft_logging.uninstall()
    assert root.level == logging.WARNING  # put back as it was
    root.setLevel(old_level)
    record = flow_tracker.get_process(tracker.process_id)
    assert record is not None
    assert [e.message for e in record.logs] == ["stored without setting a level"]
