"""Steps whose results or ends the database cannot take: each ends once, none runs forever.

On both databases: PostgreSQL refuses in JSONB what SQLite keeps (a lone
surrogate, a NUL), so what passes on SQLite alone proves nothing here.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import func, select, text, update

import flow_tracker
from flow_tracker import UsageError
from flow_tracker.store import step_writes
from flow_tracker.store.engine import Store
from flow_tracker.store.schema import processes, workflow_runs, workflow_steps
from flow_tracker.store.workflows import Dispatch
from flow_tracker.workflows import engine, manage
from tests.support.proxy import TcpProxy
from tests.workflows.helpers import Calls, waited_for

WAIT = 60.0  # generous: a busy machine; these runs end in a second when idle


def one_step(name: str, body: Any, calls: Calls, **options: Any) -> Any:
    """A workflow whose step ``only`` returns ``body()``, then a child that needs it."""
    wf = flow_tracker.workflow(name)

    def only(context: Any) -> Any:
        calls.hit("only")
        return body()

    wf.step(only, name="only", **options)

    @wf.step(depends_on=["only"])
    def after(context: Any, only: Any) -> str:
        calls.hit("after")
        return "ran"

    return wf


def reap_a_few_times(url: str) -> None:
    """What a reaper would do over the next minutes: nothing may run a second time."""
    store = Store(url)
    try:
        for _ in range(3):
            flow_tracker.reap()
            engine.recover(store, 0.001)
    finally:
        store.dispose()


def test_a_result_with_a_lone_surrogate_is_stored_as_visible_text_and_the_run_completes(
    tracked: str,
) -> None:
    calls = Calls()
    # What os.listdir gives for a file name that is not UTF-8.
    name = b"report-\xff.csv".decode("utf-8", "surrogateescape")
    run = one_step("surrogate_result", lambda: {"file": name, name: 1}, calls).run()
    status = run.wait(WAIT)
    assert status.status == "completed", status.steps["only"].error
    assert status.steps["only"].result == {"file": "report-\\udcff.csv", "report-\\udcff.csv": 1}
    reap_a_few_times(tracked)
    assert calls.counts == {"only": 1, "after": 1}


def test_a_result_with_nul_characters_is_stored_with_replacement_characters(tracked: str) -> None:
    calls = Calls()
    run = one_step("nul_result", lambda: {"a\x00b": ["x\x00", "\\u0000 stays text"]}, calls).run()
    status = run.wait(WAIT)
    assert status.status == "completed", status.steps["only"].error
    assert status.steps["only"].result == {"a\ufffdb": ["x\ufffd", "\\u0000 stays text"]}


@pytest.fixture
def refusing_results(tracked: str) -> str:
    """The steps table refuses any result holding the text ``refuse-me``.

    A real refusal by the database (a constraint), as PostgreSQL refuses a value
    it cannot store.
    """
    store = Store(tracked)
    store.ensure_schema()
    with store.engine.begin() as conn:
        if store.dialect == "postgresql":
            conn.execute(
                text(
                    "ALTER TABLE flow_tracker_workflow_steps ADD CONSTRAINT refuse_me"
                    " CHECK (result IS NULL OR result::text NOT LIKE '%refuse-me%')"
                )
            )
        else:
            conn.execute(
                text(
                    "CREATE TRIGGER refuse_me BEFORE UPDATE ON flow_tracker_workflow_steps"
                    " WHEN NEW.result LIKE '%refuse-me%'"
                    " BEGIN SELECT RAISE(ABORT, 'refused: refuse-me'); END"
                )
            )
    store.dispose()
    return tracked


def _drop_refusal(url: str) -> None:
    store = Store(url)
    with store.engine.begin() as conn:
        if store.dialect == "postgresql":
            conn.execute(
                text("ALTER TABLE flow_tracker_workflow_steps DROP CONSTRAINT IF EXISTS refuse_me")
            )
        else:
            conn.execute(text("DROP TRIGGER IF EXISTS refuse_me"))
    store.dispose()


def test_an_end_the_database_refuses_fails_the_step_once_with_the_database_error(
    refusing_results: str,
) -> None:
    calls = Calls()
    try:
        run = one_step("refused_end", lambda: {"note": "refuse-me"}, calls, retries=2).run()
        status = run.wait(WAIT)
        reap_a_few_times(refusing_results)
    finally:
        _drop_refusal(refusing_results)
    step = status.steps["only"]
    assert status.status == "failed"
    assert step.status == "failed" and step.attempts == 1
    assert step.error is not None and "refused to store this step's end" in step.error
    assert calls.counts == {"only": 1}  # never again: not by retries, nor by the reaper
    flow_tracker.flush()
    record = flow_tracker.get_process(step.process_id) if step.process_id else None
    assert record is not None and record.status == "failed"


def test_a_result_too_deep_to_encode_fails_the_step_and_the_run_ends(tracked: str) -> None:
    def deep() -> Any:
        value: Any = []
        for _ in range(100_000):
            value = [value]
        return value

    calls = Calls()
    status = one_step("deep_result", deep, calls).run().wait(WAIT)
    step = status.steps["only"]
    assert status.status == "failed" and step.status == "failed"
    assert step.error is not None and "nested too deeply" in step.error
    assert calls.counts == {"only": 1}


def test_a_result_over_max_result_bytes_fails_the_step_with_the_limit_in_its_error(
    tracked: str,
) -> None:
    flow_tracker.configure(database_url=tracked, log_to_stdlib=False, max_result_bytes=10_000)
    status = one_step("big_result", lambda: "x" * 20_000, Calls()).run().wait(WAIT)
    step = status.steps["only"]
    assert step.status == "failed" and step.error is not None
    assert "more than the limit of 10,000" in step.error
    assert step.error.startswith("flow_tracker.UsageError: ")


class Stopped(BaseException):
    """What some queues raise into a job to stop it (Dramatiq's time limit is one)."""


def test_a_step_stopped_by_a_base_exception_fails_and_the_run_ends(tracked: str) -> None:
    def stop() -> None:
        raise Stopped("time limit exceeded")

    status = one_step("stopped_step", stop, Calls()).run().wait(WAIT)
    step = status.steps["only"]
    assert status.status == "failed" and step.status == "failed"
    assert step.error is not None and step.error.split(":")[0].endswith("Stopped")


def test_a_cancelled_async_step_fails_instead_of_hanging(tracked: str) -> None:
    wf = flow_tracker.workflow("cancelled_async")

    @wf.step()
    async def only(context: Any) -> None:
        raise asyncio.CancelledError("cancelled under the step")

    status = wf.run().wait(WAIT)
    assert status.steps["only"].status == "failed"
    assert (status.steps["only"].error or "").startswith("asyncio.exceptions.CancelledError")


def test_a_step_its_own_worker_reported_lost_runs_again_at_most_max_lost_times(
    tracked: str,
) -> None:
    """A loss its worker reported itself (an end it could not store) counts.

    As the reaper's do: max_lost bounds every way a step runs again.
    """
    flow_tracker.configure(database_url=tracked, log_to_stdlib=False, max_lost=2)
    release = threading.Event()
    calls = Calls()
    wf = flow_tracker.workflow("self_reported_lost")

    @wf.step()
    def only(context: Any) -> None:
        calls.hit("only")
        release.wait(WAIT)

    run = wf.run()
    store = Store(tracked)
    try:
        for turn in range(1, 4):
            _wait(lambda: _step_status(store, run.id) == "running", f"attempt {turn} running")
            # What _run_step writes when an end cannot be stored: the step's row stays
            # running, its process says lost, by its own worker (not the reaper).
            with store.engine.begin() as conn:
                conn.execute(
                    update(processes)
                    .where(processes.c.parent_process_id == run.id)
                    .values(status="lost", error_class="flow_tracker.EndNotStored")
                )
            engine.recover(store, 0.0)
            if _step_status(store, run.id) == "failed":
                break
        release.set()
        status = run.wait(WAIT)
    finally:
        release.set()
        store.dispose()
    assert status.steps["only"].status == "failed"
    assert "max_lost=2" in (status.steps["only"].error or "")
    assert turn == 2  # the first loss sent it again, the second was the last


def _step_status(store: Store, run_id: uuid.UUID) -> str | None:
    with store.engine.connect() as conn:
        return conn.execute(
            select(workflow_steps.c.status).where(workflow_steps.c.run_id == run_id)
        ).scalar()


def _wait(predicate: Any, what: str, seconds: float = WAIT) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {seconds:.0f} s for: {what}")
        time.sleep(0.02)


# -- misuse refused before anything is stored ------------------------------------------------


@pytest.mark.parametrize(
    ("name", "step", "queue_name", "why"),
    [
        ("wf\x00nul", "a", None, "control character"),
        ("wf-surrogate-\ud800", "a", None, "lone surrogate"),
        ("wf_ok", "step\x00", None, "control character"),
        ("wf_ok", "line\nbreak", None, "control character"),
        ("wf_ok", "a", "q" * 300, "at most 255 characters"),
        ("wf_ok", "a", "queue\x00", "control character"),
        ("w" * 121, "a", None, "at most 120 characters"),
    ],
)
def test_names_that_cannot_be_stored_are_refused_when_declared(
    name: str, step: str, queue_name: str | None, why: str
) -> None:
    def declare() -> None:
        wf = flow_tracker.workflow(name, queue_name=queue_name)
        wf.step(name=step)(lambda context: None)

    with pytest.raises(UsageError, match=why):
        declare()


def test_a_context_nested_too_deeply_is_refused_and_nothing_is_stored(tracked: str) -> None:
    wf = one_step("deep_context", lambda: None, Calls())
    deep: Any = {}
    for _ in range(100_000):
        deep = {"d": deep}
    with pytest.raises(UsageError, match="nested too deeply"):
        wf.run(context={"d": deep})
    assert _run_count(tracked) == 0


def test_a_context_over_max_context_bytes_is_refused_and_nothing_is_stored(tracked: str) -> None:
    flow_tracker.configure(database_url=tracked, log_to_stdlib=False, max_context_bytes=50_000)
    wf = one_step("big_context", lambda: None, Calls())
    with pytest.raises(UsageError, match="pass ids, not data"):
        wf.run(context={"rows": ["row"] * 20_000})
    assert _run_count(tracked) == 0


def test_a_large_context_is_accepted_with_a_warning(
    tracked: str, caplog: pytest.LogCaptureFixture
) -> None:
    flow_tracker.configure(database_url=tracked, log_to_stdlib=False, context_warning_bytes=1_000)
    wf = one_step("large_context", lambda: None, Calls())
    with caplog.at_level(logging.WARNING, logger="flow_tracker.workflows"):
        status = wf.run(context={"rows": ["row"] * 500}).wait(WAIT)
    assert status.status == "completed"
    assert "pass ids, not data" in caplog.text


def _run_count(url: str) -> int:
    store = Store(url)
    store.ensure_schema()
    try:
        with store.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(workflow_runs)).scalar_one())
    finally:
        store.dispose()


# -- the pool takes its steps again after an outage -------------------------------------------


@pytest.mark.postgres
def test_steps_due_during_an_outage_run_once_it_ends_with_no_reaper(
    proxied_pg: tuple[str, TcpProxy],
) -> None:
    url, proxy = proxied_pg
    flow_tracker.configure(database_url=url, log_to_stdlib=False)
    calls = Calls()
    wf = flow_tracker.workflow("pool_outage")

    @wf.step()
    def start(context: Any) -> int:
        return 1

    fan = []
    for index in range(10):

        @wf.step(name=f"leaf_{index}", depends_on=["start"], retries=3, backoff=0.5, jitter=0)
        def leaf(context: Any, start: int, _index: int = index) -> int:
            # The first attempt fails while the database is still there; the retry
            # is due while it is away.
            if calls.hit(f"leaf_{_index}") == 1:
                raise TimeoutError("first attempt")
            return _index

        fan.append(leaf)

    run = wf.run()
    _wait(lambda: sum(calls.counts.values()) >= 10, "every leaf's first attempt")
    proxy.stop()
    time.sleep(3.0)  # the retries fall due and fail to take their steps
    proxy.start()
    status = waited_for(run, WAIT)
    assert status.status == "completed", {n: s.status for n, s in status.steps.items()}
    assert all(calls.counts[f"leaf_{i}"] == 2 for i in range(10)), calls.counts


# -- a write the database did, whose reply the network lost ---------------------------------
#
# The proxy passes the request and drops the server's reply: the worker sees its
# connection cut, tries again, and finds the step already changed - by its own
# write. It must go on as the lost reply would have told it, with no reaper.


def _proxied(proxied_pg: tuple[str, TcpProxy]) -> TcpProxy:
    url, proxy = proxied_pg
    flow_tracker.configure(database_url=url, log_to_stdlib=False)
    return proxy


def _outage_after_loss(proxy: TcpProxy) -> None:
    """Once the reply is lost, keep the database away a moment, then bring it back."""
    assert proxy.reply_lost.wait(WAIT), "no request carried the marker: nothing was lost"
    time.sleep(1.0)
    proxy.start()


def _assert_one_reply_lost(proxy: TcpProxy) -> None:
    """Exactly one reply was lost - waited for, not read at once.

    The run may complete before the proxy's thread has counted the reply it
    dropped: the write committed on the server, and a due-retry poll or a child's
    sender can go on from the database while that thread waits for the CPU.
    """
    assert proxy.reply_lost.wait(WAIT), "no request carried the marker: nothing was lost"
    assert proxy.replies_lost == 1


def test_after_a_lost_reply_a_worker_goes_on_only_with_the_write_that_was_its_own(
    tracked: str,
) -> None:
    """What the worker reads back after a lost reply: its own claim or end, never another's."""
    wf = flow_tracker.workflow("lost_reply_reads")
    wf.step(name="a")(lambda context: 1)
    wf.step(name="b", depends_on=["a"])(lambda context, a: a)
    sent: list[Dispatch] = []
    real = engine.sender_for("threads")
    assert real is not None
    engine.register_sender("threads", sent.append)  # steps wait here: the test plays the worker
    try:
        run = wf.run(context={"order": 7}).id
    finally:
        engine.register_sender("threads", real)
    assert [d.step for d in sent] == ["a"]
    store = Store(tracked)
    me = {"host": "worker-1", "pid": 101, "job_system": "threads"}
    other = {**me, "pid": 102}
    try:
        t1 = datetime.now(timezone.utc)
        t2 = t1 + timedelta(milliseconds=1)
        assert step_writes.claim(store, run, "a", me, t1) is not None
        assert step_writes.claim(store, run, "a", me, t2) is None  # not there to take
        # Taken by another try, another worker: not this one's to run.
        assert step_writes.claim_found(store, run, "a", me, [t2]) is None
        assert step_writes.claim_found(store, run, "a", other, [t1, t2]) is None
        found = step_writes.claim_found(store, run, "a", me, [t2, t1])
        assert found is not None
        taken, at = found
        assert (taken.attempt, taken.context, taken.parents, at) == (1, {"order": 7}, {}, t1)

        e1, e2 = t1 + timedelta(seconds=1), t1 + timedelta(seconds=2)
        ended = step_writes.end(store, run, "a", 1, "completed", now=e1, result=1)
        assert ended.stored and [r[0] for r in ended.ready] == ["b"]
        assert not step_writes.end(store, run, "a", 1, "completed", now=e2, result=1).stored
        # Another try's moment, another outcome, another attempt: not this worker's end.
        assert not step_writes.end_found(store, run, "a", 1, [(e2, "completed")]).stored
        assert not step_writes.end_found(store, run, "a", 1, [(e1, "failed")]).stored
        assert not step_writes.end_found(store, run, "a", 2, [(e1, "completed")]).stored
        again = step_writes.end_found(store, run, "a", 1, [(e2, "completed"), (e1, "completed")])
        assert again.stored and again.stored_at == e1
        assert (again.ready, again.run_status) == (ended.ready, "running")
        # Once a child is taken, it is no longer this worker's to send.
        assert step_writes.claim(store, run, "b", other, e2) is not None
        assert step_writes.end_found(store, run, "a", 1, [(e1, "completed")]).ready == []
        child = step_writes.claim_found(store, run, "b", other, [e2])
        assert child is not None and child[0].parents == {"a": 1}  # as the claim read them
    finally:
        store.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("outage", [False, True], ids=["reply_lost", "reply_lost_then_away"])
def test_a_retry_whose_end_was_stored_but_its_reply_lost_is_still_sent(
    proxied_pg: tuple[str, TcpProxy], outage: bool
) -> None:
    proxy = _proxied(proxied_pg)
    calls = Calls()
    marker = f"first attempt, its end's reply lost ({outage})"
    wf = flow_tracker.workflow("lost_end_reply_retry")

    @wf.step(retries=2, backoff=0.1, jitter=0)
    def flaky(context: Any) -> str:
        if calls.hit("flaky") == 1:
            # Armed here: the next request carrying the marker is this attempt's end.
            proxy.lose_reply(marker.encode(), then_stop=outage)
            raise TimeoutError(marker)
        return "second attempt"

    run = wf.run()
    if outage:
        _outage_after_loss(proxy)
    status = waited_for(run, WAIT)
    _assert_one_reply_lost(proxy)
    assert status.status == "completed"
    assert calls.counts == {"flaky": 2}
    assert status.steps["flaky"].attempts == 2


@pytest.mark.postgres
@pytest.mark.parametrize("outage", [False, True], ids=["reply_lost", "reply_lost_then_away"])
def test_the_children_an_end_made_ready_run_though_its_reply_was_lost(
    proxied_pg: tuple[str, TcpProxy], outage: bool
) -> None:
    proxy = _proxied(proxied_pg)
    calls = Calls()
    marker = f"a result whose end's reply is lost ({outage})"
    wf = flow_tracker.workflow("lost_end_reply_children")

    @wf.step()
    def first(context: Any) -> str:
        calls.hit("first")
        proxy.lose_reply(marker.encode(), then_stop=outage)
        return marker

    for name in ("left", "right"):

        @wf.step(name=name, depends_on=["first"])
        def child(context: Any, first: str, _name: str = name) -> str:
            calls.hit(_name)
            return first

    run = wf.run()
    if outage:
        _outage_after_loss(proxy)
    status = waited_for(run, WAIT)
    _assert_one_reply_lost(proxy)
    assert status.status == "completed"
    assert calls.counts == {"first": 1, "left": 1, "right": 1}
    assert status.steps["left"].result == marker


@pytest.mark.postgres
@pytest.mark.parametrize("outage", [False, True], ids=["reply_lost", "reply_lost_then_away"])
def test_a_step_taken_by_a_claim_whose_reply_was_lost_runs_once(
    proxied_pg: tuple[str, TcpProxy], outage: bool
) -> None:
    proxy = _proxied(proxied_pg)
    calls = Calls()
    # The step's name is in its claim's request, and in none sent between the
    # parent's body (which arms the proxy) and that claim.
    taken = f"taken_by_a_lost_claim_{int(outage)}"
    wf = flow_tracker.workflow("lost_claim_reply")

    @wf.step()
    def parent(context: Any) -> int:
        calls.hit("parent")
        proxy.lose_reply(taken.encode(), then_stop=outage)
        return 1

    @wf.step(name=taken, depends_on=["parent"])
    def child(context: Any, parent: int) -> int:
        calls.hit(taken)
        return parent + 1

    run = wf.run()
    if outage:
        _outage_after_loss(proxy)
    status = waited_for(run, WAIT)
    _assert_one_reply_lost(proxy)
    assert status.status == "completed"
    assert calls.counts == {"parent": 1, taken: 1}
    assert status.steps[taken].attempts == 1 and status.steps[taken].result == 2


def test_long_reasons_and_names_do_not_break_the_engine(tracked: str) -> None:
    """A step whose name is the longest allowed, in a workflow whose name is too."""
    wf = flow_tracker.workflow("w" * 120)

    @wf.step(name="s" * 120)
    def only(context: Any) -> str:
        return "ok"

    status = wf.run().wait(WAIT)
    assert status.status == "completed"
    flow_tracker.flush()
    store = Store(tracked)
    try:
        with store.engine.connect() as conn:
            names = conn.execute(select(processes.c.name)).scalars().all()
    finally:
        store.dispose()
    assert "w" * 120 + "." + "s" * 120 in names


def test_a_large_context_and_result_are_read_as_previews_when_a_page_asks(tracked: str) -> None:
    flow_tracker.configure(database_url=tracked, log_to_stdlib=False, max_context_bytes=10_000_000)
    context = {f"key-{i}": "v" * 10 for i in range(50_000)}
    wf = one_step("previewed", lambda: list(range(100_000)), Calls())
    run = wf.run(context=context)
    assert run.wait(WAIT).status == "completed"

    whole = flow_tracker.get_workflow(run.id)
    assert whole.context == context and len(whole.steps["only"].result) == 100_000

    shown = flow_tracker.get_workflow(run.id, preview_over=100_000)
    for value in (shown.context, shown.steps["only"].result):
        assert value["_truncated"] is True and value["original_size"] > 100_000
        assert 0 < len(value["preview"]) <= 2_000
    assert shown.steps["after"].result == "ran"  # small values are read whole

    outline = manage.get_workflow_outline(run.id, preview_over=100_000)
    assert outline.context["_truncated"] is True
    listed = manage.with_results(outline, ["only", "after"], preview_over=100_000)
    assert listed.steps["only"].result["_truncated"] is True
    assert listed.steps["after"].result == "ran"
