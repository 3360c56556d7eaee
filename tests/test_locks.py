"""Critical sections (flow_tracker.exclusive) in one interpreter, on SQLite and PostgreSQL.

The cross-process race and the SIGKILL / SIGSTOP cases are in test_lock_race.py.
"""

from __future__ import annotations

import threading
import time

import pytest

import flow_tracker
from flow_tracker import LockConflictError, Status, locks
from flow_tracker.errors import DatabaseUnavailableError, UsageError
from flow_tracker.heartbeat import HEARTBEAT
from flow_tracker.jobs import finish_job, start_job
from flow_tracker.locks import held_locks


def holders() -> dict[tuple[str, str], tuple[str, int]]:
    return {(h.name, h.key): (h.holder, h.fence) for h in held_locks()}


def test_a_held_key_is_refused_to_another_holder_and_free_after_release(tracked: str) -> None:
    with flow_tracker.exclusive("financial", key=42) as lease:
        assert holders() == {("financial", "42"): (lease.holder, lease.fence)}
        errors: list[BaseException] = []

        def other() -> None:
            try:
                with flow_tracker.exclusive("financial", key=42):
                    pass
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        assert len(errors) == 1 and isinstance(errors[0], LockConflictError)
        assert errors[0].holder == lease.holder
        with flow_tracker.exclusive("financial", key=43):  # another key is free
            pass
        with flow_tracker.exclusive("other", key=42):  # another name too
            pass
    assert holders() == {}
    with flow_tracker.exclusive("financial", key=42) as again:
        assert again.fence == lease.fence + 1  # fences only grow


def test_nested_blocks_of_one_process_reenter_and_free_at_the_outermost(tracked: str) -> None:
    with flow_tracker.track("charge"):
        with flow_tracker.exclusive("financial", key="u1") as outer:
            with flow_tracker.exclusive("financial", key="u1") as inner:
                assert inner is outer
            assert ("financial", "u1") in holders()
        assert holders() == {}


def test_a_retry_of_the_same_job_reenters_the_lock_its_dead_attempt_left(tracked: str) -> None:
    first = start_job(job_system="test", job_id="job-1", name="charge", queue="q", attempt=1)
    lease = flow_tracker.exclusive("financial", key="u1", ttl=60).__enter__()
    # The attempt dies without releasing: this interpreter forgets it held anything.
    HEARTBEAT.clear()
    locks._held.clear()
    flow_tracker.current().complete(status="failed")  # type: ignore[union-attr]
    assert lease.holder == f"process:{first.process_id}"
    retry = start_job(job_system="test", job_id="job-1", name="charge", queue="q", attempt=2)
    with flow_tracker.exclusive("financial", key="u1", ttl=60) as again:
        assert again.holder == lease.holder
        assert again.fence == lease.fence + 1  # the dead attempt's release cannot free it
        assert lease.release() is False
        assert holders()[("financial", "u1")] == (again.holder, again.fence)
    finish_job(retry, Status.COMPLETED)


def test_skip_ends_the_process_skipped_with_the_reason_and_runs_nothing(tracked: str) -> None:
    ran: list[str] = []
    with flow_tracker.exclusive("financial", key=7):
        process = None

        def job() -> None:
            nonlocal process
            with flow_tracker.track("charge") as tracker:
                process = tracker.process_id
                with flow_tracker.exclusive("financial", key=7, on_conflict="skip"):
                    ran.append("body")
                ran.append("after")  # the block ends the process; nothing after runs

        thread = threading.Thread(target=job)
        thread.start()
        thread.join()
    assert ran == []
    assert process is not None
    record = flow_tracker.get_process(process)
    assert record is not None and record.status is Status.SKIPPED
    assert "financial" in record.metadata["skip_reason"]


def test_the_decorator_takes_its_key_from_the_arguments_and_skips_by_returning_none(
    tracked: str,
) -> None:
    calls: list[int] = []

    @flow_tracker.track("charge_job")
    @flow_tracker.exclusive("financial", key="{user_id}", on_conflict="skip")
    def charge(user_id: int, amount: int = 1) -> int:
        calls.append(user_id)
        return amount

    assert charge(5, amount=3) == 3
    with flow_tracker.exclusive("financial", key="5"):
        done: list[object] = []
        thread = threading.Thread(target=lambda: done.append(charge(5)))
        thread.start()
        thread.join()
        assert done == [None]
        assert charge.__name__ == "charge"
    assert calls == [5]
    statuses = sorted(p.status.value for p in flow_tracker.list_processes(name="charge_job"))
    assert statuses == ["completed", "skipped"]


def test_wait_gets_the_lock_once_it_is_released_and_raises_after_its_timeout(
    tracked: str,
) -> None:
    release = threading.Event()
    taken = threading.Event()

    def holder() -> None:
        with flow_tracker.exclusive("report", key="daily"):
            taken.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    taken.wait(10)
    with pytest.raises(LockConflictError, match="after waiting"):
        with flow_tracker.exclusive("report", key="daily", on_conflict="wait", timeout=0.3):
            pass
    threading.Timer(0.3, release.set).start()
    with flow_tracker.exclusive("report", key="daily", on_conflict="wait", timeout=10) as lease:
        assert lease.fence == 2
    thread.join()


def test_a_lease_not_renewed_is_taken_over_and_the_stale_release_frees_nothing(
    tracked: str,
) -> None:
    stale = flow_tracker.exclusive("financial", key="u9", ttl=0.4).__enter__()
    HEARTBEAT.remove_lease(stale)  # the holder pauses: nothing renews its lease
    locks._held.clear()
    time.sleep(0.6)
    with flow_tracker.exclusive("financial", key="u9", ttl=30) as fresh:
        assert fresh.fence == stale.fence + 1
        assert stale.release() is False
        stale.renew()
        assert stale.lost
        assert holders()[("financial", "u9")] == (fresh.holder, fresh.fence)


def test_the_heartbeat_renews_a_held_lease_past_its_ttl(tracked: str) -> None:
    with flow_tracker.exclusive("long", key="k", ttl=0.6) as lease:
        time.sleep(1.5)
        assert not lease.lost
        errors: list[BaseException] = []

        def other() -> None:
            try:
                with flow_tracker.exclusive("long", key="k"):
                    pass
            except LockConflictError as exc:
                errors.append(exc)

        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        assert len(errors) == 1


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"name": ""}, "lock name"),
        ({"on_conflict": "ignore"}, "on_conflict"),
        ({"ttl": 0}, "ttl"),
        ({"ttl": "5"}, "ttl"),
        ({"timeout": -1}, "timeout"),
        ({"timeout": "5"}, "timeout"),
    ],
)
def test_misuse_is_a_clear_usage_error_at_once(arguments: dict[str, object], message: str) -> None:
    options: dict[str, object] = {"name": "financial", "key": 1, **arguments}
    with pytest.raises(UsageError, match=message):
        flow_tracker.exclusive(**options)  # type: ignore[arg-type]


def test_a_long_key_is_kept_apart_from_its_prefix(tracked: str) -> None:
    long_key = "x" * 300
    with flow_tracker.exclusive("k", key=long_key), flow_tracker.exclusive("k", key=long_key[:255]):
        assert len(holders()) == 2


def test_no_lock_is_granted_when_the_database_is_unreachable() -> None:
    flow_tracker.configure(database_url="postgresql://postgres@127.0.0.1:1/none", verify=False)
    with pytest.raises(DatabaseUnavailableError, match="unreachable"):
        with flow_tracker.exclusive("financial", key=1):
            pytest.fail("the body must not run without the lock")


def test_a_jobs_critical_section_option_takes_an_exclusive_or_its_arguments() -> None:
    from flow_tracker.jobs import exclusive_option

    given = flow_tracker.exclusive("charge", key="{user_id}")
    assert exclusive_option(given) is given
    built = exclusive_option({"name": "charge", "key": "{user_id}", "on_conflict": "skip"})
    assert built is not None and (built.name, built.on_conflict) == ("charge", "skip")
    assert exclusive_option(None) is None
    with pytest.raises(flow_tracker.UsageError, match="flow_tracker_exclusive"):
        exclusive_option("charge")
    with pytest.raises(flow_tracker.UsageError, match="flow_tracker_exclusive"):
        exclusive_option({"name": "charge", "lease": 5})
    with pytest.raises(flow_tracker.UsageError, match="on_conflict"):
        exclusive_option({"name": "charge", "on_conflict": "later"})


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{account}", "names 'account', which is not an argument"),
        ("{account.id}", "names 'account'"),
        ("{}", "positional fields are not supported"),
        ("{0}", "positional fields are not supported"),
        ("{user_id", "malformed"),
    ],
)
def test_a_key_template_that_names_no_argument_is_refused_when_decorating(
    template: str, message: str
) -> None:
    section = flow_tracker.exclusive("financial", key=template)
    with pytest.raises(UsageError, match=message):

        @section
        def charge(user_id: str, amount: int = 0) -> None: ...


def test_a_key_template_may_name_attributes_and_keyword_arguments(tracked: str) -> None:
    class User:
        id = 7

    @flow_tracker.exclusive("financial", key="{user.id}-{region}")
    def charge(user: User, **options: str) -> str:
        return ",".join(lock.key for lock in held_locks())

    assert charge(User(), region="eu") == "7-eu"
    with pytest.raises(UsageError, match="cannot be filled from this call"):
        charge(User())  # no region: the body does not run without its lock
