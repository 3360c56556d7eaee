"""The README, executed: every Python example and every ``flow-tracker`` line runs as written.

Each example runs in a namespace that holds what the README leaves to the
reader (``validate_input``, ``items``, a ``User``...), then the test checks
what the example promises. The queue examples are written into a ``shop``
package in a temporary folder and run by real Celery, RQ and Dramatiq workers.
An example added to the README without a test here fails
:func:`test_every_readme_example_has_a_test`.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import subprocess
import sys
import threading
import types
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import flow_tracker
from flow_tracker import Status
from flow_tracker.cli import main
from flow_tracker.jobs import WRAPPED_MARK
from tests.integrations.workers import (
    REPO,
    bin_path,
    require_service,
    wait_until_final,
    worker_process,
)
from tests.support.readme import Block, arguments, blocks, command_lines, reference_commands

EXAMPLES = {block.name: block for block in blocks("python")}
README_REDIS = "redis://localhost:6379/0"  # the README's broker
TEST_REDIS = "redis://127.0.0.1:6379/12"  # where the tests run it instead (theirs alone)


def example(name: str) -> Block:
    """The README example called ``name``."""
    return EXAMPLES[name]


def run(name: str, **names: Any) -> dict[str, Any]:
    """Run the example ``name`` with ``names`` defined; return its namespace."""
    namespace: dict[str, Any] = {
        "__name__": "readme_example",
        "flow_tracker": flow_tracker,
        **names,
    }
    exec(example(name).compiled(), namespace)
    return namespace


def stored(name: str) -> flow_tracker.ProcessRecord:
    """The last stored process called ``name``, with its flows and logs."""
    flow_tracker.flush()
    page = flow_tracker.list_processes(name=name, limit=1)
    assert page.items, f"no process {name!r} was stored"
    record = flow_tracker.get_process(page.items[0].id)
    assert record is not None
    return record


def test_every_readme_example_has_a_test() -> None:
    source = Path(__file__).read_text()
    untested = [name for name in EXAMPLES if f'"{name}"' not in source]
    assert not untested, f"README examples without a test here: {untested}"


# -- the recording API ----------------------------------------------------------------


def test_configure(database_url: str) -> None:
    block = example("Configure #1")
    code = block.code.replace("postgresql://app@db/app", database_url)
    assert code != block.code, "the example's URL changed: update this test"
    exec(compile(code, "README.md", "exec"), {})
    settings = flow_tracker.config.current()
    assert (settings.database_url, settings.retention_days) == (database_url, 365)
    flow_tracker.reset()


def test_track_a_process_with_a_block(tracked: str) -> None:
    seen: list[int] = []
    run(
        "Track a process with a block #1",
        validate_input=lambda: None,
        items=[1, 2, 3],
        process=seen.append,
    )
    record = stored("MyProcess")
    assert seen == [1, 2, 3]
    assert record.status is Status.COMPLETED and record.metadata == {"user_id": 123}
    assert [f.name for f in record.flows] == ["validate_input", "process_data"]
    assert record.flows[1].metadata == {"count": 3}


class User:
    """What the README's examples call a user."""

    def __init__(self, user_id: int) -> None:
        self.id = user_id
        self.email = f"user{user_id}@example.com"
        self.last_emailed_at: object = None

    @classmethod
    def get(cls, user_id: int) -> User:
        return cls(user_id)


def test_decorators_and_the_current_process(tracked: str) -> None:
    sent: list[str] = []
    ns = run(
        "Decorators and the current process #1",
        User=User,
        send_welcome=lambda user: sent.append(user.email),
        now=lambda: "now",
    )
    ns["my_job"](7)
    record = stored("MyJob")
    assert sent == ["user7@example.com"]
    assert [f.name for f in record.flows] == ["load_user", "send_email", "update_stats"]
    assert record.flows[0].logs[0].data == {"user_id": 7}


def test_without_a_block(tracked: str) -> None:
    run("Without a block #1", do_something=lambda: None)
    assert stored("ManualProcess").status is Status.COMPLETED


def test_logs_metadata_progress(tracked: str) -> None:
    tracker = flow_tracker.start("readme logs")
    run("Logs, metadata, progress #1", tracker=tracker)
    tracker.complete()
    record = stored("readme logs")
    assert [e.level for e in record.logs] == [
        "warning",
        "debug",
        "info",
        "warning",
        "error",
        "info",
    ]
    assert record.logs[-1].message == "to the innermost current flow"
    assert record.metadata == {"step": "B", "rows_imported": 1197}
    assert (record.progress_current, record.progress_total) == (1000, 1000)


def test_read_status_and_progress_from_anywhere(tracked: str) -> None:
    ids = []
    for n in range(3):
        with flow_tracker.track(f"readme status {n}", metadata={"step": "load"}) as tracker:
            tracker.progress.total = 4
            tracker.progress.current = 1
        ids.append(tracker.process_id)
    ns = run(
        "Read status and progress from anywhere #1",
        process_id=ids[0],
        id1=ids[0],
        id2=ids[1],
        id3=ids[2],
    )
    assert ns["status"].progress == 1.0  # completed, although current/total say 1 of 4
    assert (ns["status"].current, ns["status"].total) == (1, 4)


def test_query_and_clean_up(tracked: str) -> None:
    with flow_tracker.track("nightly_import", metadata={"tenant": "acme"}) as tracker:
        tracker.info("ok")
    ns = run("Query and clean up #1", process_id=tracker.process_id)
    assert ns["process"].id == tracker.process_id
    assert ns["page"].items == []  # nothing failed


def test_threads_and_asyncio(tracked: str) -> None:
    def load_file(path: str) -> None:
        flow_tracker.log(f"loaded {path}")

    run("Threads and asyncio #1", load_file=load_file, paths=["a.csv", "b.csv"])
    record = stored("import")
    assert sorted(e.message for e in record.logs) == ["loaded a.csv", "loaded b.csv"]


def test_the_logging_module(tracked: str) -> None:
    from flow_tracker.integrations import logging as ft_logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.WARNING)  # as in a fresh interpreter
    run("The `logging` module #1")
    try:
        with flow_tracker.track("readme logging"):
            logging.getLogger("myapp").info("stored at INFO")
    finally:
        ft_logging.uninstall()
        root.setLevel(level)
    assert [e.message for e in stored("readme logging").logs] == ["stored at INFO"]


def test_testing_your_jobs_needs_no_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # where a default SQLite file would appear
    job = run(
        "Decorators and the current process #1",
        User=User,
        send_welcome=lambda user: None,
        now=lambda: "now",
    )
    tests = run("Testing your jobs #1", my_job=job["my_job"])
    tests["test_my_job_sends_the_welcome_email"]()
    assert flow_tracker.config.in_force() is None and list(tmp_path.iterdir()) == []


# -- the job queues, with real workers --------------------------------------------------


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """Write README examples as modules of a ``shop`` package the workers can import."""
    require_service("127.0.0.1", 6379, "Redis")
    from redis import Redis

    Redis.from_url(TEST_REDIS).flushdb()  # no message left by an earlier run
    root = tmp_path / "app"
    (root / "shop").mkdir(parents=True)
    (root / "shop" / "__init__.py").write_text("")
    sys.path.insert(0, str(root))

    def module(name: str, file: str) -> Path:
        code = example(name).code.replace(README_REDIS, TEST_REDIS)
        path = root / "shop" / f"{file}.py"
        path.write_text(code)
        return path

    def forget() -> None:
        for loaded in [m for m in sys.modules if m == "shop" or m.startswith("shop.")]:
            del sys.modules[loaded]

    forget()
    yield module
    forget()
    sys.path.remove(str(root))


def shop_env(shop_root: Path, database_url: str, **extra: str) -> dict[str, str]:
    return {
        "PYTHONPATH": f"{shop_root}{os.pathsep}{REPO}",
        "FLOW_TRACKER_DATABASE_URL": database_url,
        **extra,
    }


USERS = '''
"""The shop's own code, as the README's Celery example imports it."""
import os

from redis import Redis


class User:
    def __init__(self, user_id):
        self.id, self.email = user_id, f"user{user_id}@example.com"

    @classmethod
    def get(cls, user_id):
        return cls(user_id)


def send(user):
    # The first attempt meets a busy mail server: the README's "retrying" path.
    tries = Redis.from_url(os.environ["README_REDIS"]).incr(os.environ["README_SEND_KEY"])
    if tries == 1:
        raise ConnectionError("mail server busy")
'''


# Run once per database in one interpreter, the README's Celery tasks are shared
# tasks declared twice: Celery warns, and keeps the first (the same code).
@pytest.mark.filterwarnings("ignore::celery.exceptions.DuplicateTaskNameWarning")
@pytest.mark.slow  # a real worker process
def test_celery_example_runs_in_a_real_worker_and_retries(
    tracked: str, shop: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app_module = shop("Celery #1", "celery_app")
    (app_module.parent / "users.py").write_text(USERS)
    monkeypatch.setenv("README_REDIS", TEST_REDIS)
    monkeypatch.setenv("README_SEND_KEY", f"readme-send-{uuid.uuid4().hex}")
    log = tmp_path / "worker.log"
    worker = ["-m", "celery", "-A", "shop.celery_app", "worker", "-P", "threads", "-c", "2"]
    env = shop_env(
        app_module.parents[1],
        tracked,
        **{
            "README_REDIS": TEST_REDIS,
            "README_SEND_KEY": os.environ["README_SEND_KEY"],
        },
    )
    with worker_process([*worker, "--without-gossip", "--without-mingle"], env, log):
        ns = run("Celery #2")
        assert ns["result"].id
        record = wait_until_final([ns["result"].id], log)[ns["result"].id]
    assert record.status is Status.COMPLETED, (record.status, record.error)
    assert record.attempt == 2  # the ConnectionError was retried
    history = flow_tracker.get_process(record.id)
    assert history is not None
    # In a thread pool the second attempt may start before the first one's end is
    # stored: the history holds both, each with its attempt.
    changes = {(t.status, t.attempt) for t in history.history}
    assert {("retrying", 1), ("running", 2), ("completed", 2)} <= changes, history.history


@pytest.mark.slow  # a real worker process
def test_rq_example_runs_in_a_real_worker(
    tracked: str, shop: Callable[..., Path], tmp_path: Path
) -> None:
    from redis import Redis
    from rq import Queue

    settings = shop("RQ #1", "rq_settings")
    shop("RQ #2", "jobs")
    Queue(connection=Redis()).empty()  # type: ignore[no-untyped-call]  # the README's queue
    ns = run("RQ #3")
    job_id = ns["job"].id
    assert flow_tracker.get_status(job_id).is_queued  # type: ignore[union-attr]
    log = tmp_path / "worker.log"
    env = shop_env(settings.parents[1], tracked)
    with worker_process(["rq", "worker", "-c", "shop.rq_settings", "--burst"], env, log) as proc:
        proc.wait(timeout=120)
    record = wait_until_final([job_id], log, seconds=60)[job_id]
    assert record.status is Status.COMPLETED, (record.status, record.error)
    full = flow_tracker.get_process(record.id)
    assert full is not None and full.flows[0].logs[0].message == "Sending email to user 42"


@pytest.mark.slow  # a real worker process
def test_dramatiq_example_runs_in_a_real_worker(
    tracked: str, shop: Callable[..., Path], tmp_path: Path
) -> None:
    actors = shop("Dramatiq #1", "actors")
    shop_actors = importlib.import_module("shop.actors")
    message = shop_actors.welcome_email.send(42)
    log = tmp_path / "worker.log"
    env = shop_env(actors.parents[1], tracked)
    with worker_process(["dramatiq", "shop.actors", "-p", "1", "-t", "1"], env, log):
        record = wait_until_final([message.message_id], log)[message.message_id]
    assert record.status is Status.COMPLETED, (record.status, record.error)
    full = flow_tracker.get_process(record.id)
    assert full is not None and full.logs[0].message == "Sending email to user 42"


# -- recovery, critical sections, events, exporters ----------------------------------------


def test_reap_requeue_health(tracked: str) -> None:
    ns = run("No job forgotten: heartbeats, reaper, requeue #1")
    assert ns["result"].lost == []
    assert ns["report"].healthy


def test_critical_sections(tracked: str) -> None:
    charged: list[int] = []
    fences: list[int] = []
    user = User(7)
    ns = run(
        "Critical sections #1",
        user=user,
        charge=lambda u: charged.append(u.id),
        write_report=lambda fence: fences.append(fence),
    )
    assert charged == [7] and len(fences) == 1 and fences[0] >= 1
    with flow_tracker.exclusive("financial", key="7"):  # another holder in this thread
        assert threading_call(ns["charge_job"], "7", 10) is None  # skipped


def threading_call(func: Callable[..., Any], *args: Any) -> Any:
    """Call ``func`` in another thread: outside any process each block holds on its own."""
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(func(*args)))
    thread.start()
    thread.join()
    return out[0]


# Run once per database in one interpreter, the README's Celery tasks are shared
# tasks declared twice: Celery warns, and keeps the first (the same code).
@pytest.mark.filterwarnings("ignore::celery.exceptions.DuplicateTaskNameWarning")
def test_per_job_critical_sections(tracked: str) -> None:
    import dramatiq
    from celery import Celery
    from dramatiq.brokers.stub import StubBroker

    from flow_tracker.integrations import celery as ft_celery
    from flow_tracker.integrations import dramatiq as ft_dramatiq

    app = Celery("readme_sections", broker="memory://")
    ft_celery.install(app)
    broker = StubBroker()
    dramatiq.set_broker(broker)
    ft_dramatiq.install(broker)
    ns = run("Critical sections #2", app=app, dramatiq=dramatiq)
    app.finalize()
    assert getattr(app.tasks["readme_example.charge"].run, WRAPPED_MARK, False)
    assert getattr(broker.actors["charge"].fn, WRAPPED_MARK, False)
    with flow_tracker.exclusive("financial", key="u1"):
        assert threading_call(ns["charge"], "u1", 5) is None  # RQ's: skipped while held


def test_workflow_example_runs_on_the_thread_pool(tracked: str, capsys: Any) -> None:
    ns = run("Workflows: DAGs of steps on the queue you already run #1")
    assert ns["status"].status == "completed"
    assert ns["status"].steps["confirm"].result == {"order": "confirmed", "paid": 42}
    assert capsys.readouterr().out.startswith("completed {")  # PostgreSQL orders JSON keys


def _failed_run() -> flow_tracker.WorkflowRun:
    """A run whose ``charge`` failed once (it succeeds when run again)."""
    failures = [1]
    wf = flow_tracker.workflow(f"readme_failing_{uuid.uuid4().hex[:8]}")
    wf.step(name="validate")(lambda context: {"total": 42})

    def charge(context: Any, validate: Any) -> dict[str, Any]:
        if failures:
            failures.pop()
            raise TimeoutError("the gateway timed out")
        return {"paid": validate["total"]}

    wf.step(name="charge", depends_on=["validate"])(charge)
    wf.step(name="confirm", depends_on=["charge"])(lambda context, charge: charge)
    run = wf.run()
    assert run.wait(30).status == "failed"
    return run


def _running_run(release: threading.Event) -> flow_tracker.WorkflowRun:
    wf = flow_tracker.workflow("readme_running")
    wf.step(name="slow")(lambda context: release.wait(30))
    wf.step(name="after", depends_on=["slow"])(lambda context, slow: None)
    return wf.run()


def test_workflow_repair_example_retries_and_cancels(tracked: str, capsys: Any) -> None:
    release = threading.Event()
    failed, other = _failed_run(), _running_run(release)
    run("Workflows: DAGs of steps on the queue you already run #2", run=failed, other_run=other)
    release.set()
    assert failed.wait(30).status == "completed"
    assert other.wait(30).status == "cancelled"
    out = capsys.readouterr().out
    assert "charge TimeoutError: the gateway timed out" in out and "flowchart TD" in out


def test_retry_policy_example_decides_and_retries_a_step(tracked: str, capsys: Any) -> None:
    ns = run("How a step retries: `RetryPolicy` #1")
    assert ns["status"].status == "completed" and len(ns["tries"]) == 3
    assert ns["payments"].steps["charge"].retry is ns["gateway"]
    assert capsys.readouterr().out.splitlines() == ["0.05 None", "completed 3"]


def test_start_workflow_example_keeps_version_key_skip_and_tags(tracked: str, capsys: Any) -> None:
    ns = run("Versions, and starting runs from outside the code #1")
    status = ns["run"].wait(30)
    assert status.steps["send_email"].status == "resolved"
    assert status.steps["charge"].result == {"paid": 42}
    out = capsys.readouterr().out.splitlines()
    assert out[:3] == ["True sent", "True False", "2"]
    assert "payments/process_order 2 ['charge', 'send_email']" in out


@pytest.mark.filterwarnings("ignore::celery.exceptions.DuplicateTaskNameWarning")
@pytest.mark.slow  # a real worker process
def test_celery_workflow_example_runs_in_a_real_worker(
    tracked: str, shop: Callable[..., Path], tmp_path: Path
) -> None:
    path = shop("On Celery, RQ or Dramatiq #1", "order_flow")
    flow = importlib.import_module("shop.order_flow")
    log = tmp_path / "worker.log"
    worker = ["-m", "celery", "-A", "shop.order_flow", "worker", "-P", "threads", "-c", "2"]
    env = shop_env(path.parents[1], tracked)
    with worker_process([*worker, "--without-gossip", "--without-mingle"], env, log):
        status = flow.orders.run(context={"items": 3}).wait(120)
    assert status.status == "completed", log.read_text()[-2000:]
    assert status.steps["charge"].result == {"paid": 30}


@pytest.mark.slow  # a real worker process
def test_rq_workflow_example_runs_in_a_real_worker(
    tracked: str, shop: Callable[..., Path], tmp_path: Path
) -> None:
    from redis import Redis
    from rq import Queue

    settings = shop("RQ #1", "rq_settings")
    shop("On Celery, RQ or Dramatiq #2", "rq_flow")
    Queue(connection=Redis()).empty()  # type: ignore[no-untyped-call]  # the README's queue
    flow = importlib.import_module("shop.rq_flow")
    log = tmp_path / "worker.log"
    env = shop_env(settings.parents[1], tracked)
    with worker_process(["rq", "worker", "--with-scheduler", "-c", "shop.rq_settings"], env, log):
        status = flow.orders.run(context={"items": 3}).wait(120)
    assert status.status == "completed", log.read_text()[-2000:]
    assert status.steps["charge"].result == {"paid": 30}


@pytest.mark.slow  # a real worker process
def test_dramatiq_workflow_example_runs_in_a_real_worker(
    tracked: str, shop: Callable[..., Path], tmp_path: Path
) -> None:
    path = shop("On Celery, RQ or Dramatiq #3", "dramatiq_flow")
    flow = importlib.import_module("shop.dramatiq_flow")
    log = tmp_path / "worker.log"
    env = shop_env(path.parents[1], tracked)
    with worker_process(["dramatiq", "shop.dramatiq_flow", "-p", "1", "-t", "2"], env, log):
        status = flow.orders.run(context={"items": 3}).wait(120)
    assert status.status == "completed", log.read_text()[-2000:]
    assert status.steps["charge"].result == {"paid": 30}


def test_event_subscribers(tracked: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Slack and Sentry are not on this machine: stand-ins record what would be sent.
    posts: list[dict[str, Any]] = []
    requests = types.ModuleType("requests")
    requests.post = lambda url, json: posts.append(json)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "requests", requests)
    captured: list[str] = []
    sentry = types.SimpleNamespace(capture_message=lambda text, extras: captured.append(text))
    run(
        "Event subscribers #1",
        SLACK_WEBHOOK="https://hooks.example/slack",
        sentry_sdk=sentry,
        page_oncall=lambda text: None,
    )
    with contextlib.suppress(KeyError), flow_tracker.track("readme charge"):
        raise KeyError("card")
    flow_tracker.flush()
    assert posts and posts[0]["text"].startswith("readme charge failed: KeyError: ")
    assert captured == ["readme charge: 'card'"]


def test_opentelemetry(tracked: str) -> None:
    from flow_tracker.exporters import opentelemetry as ft_otel

    run("OpenTelemetry #1")
    ft_otel.uninstall()


def test_prometheus(tracked: str) -> None:
    from flow_tracker.exporters import prometheus as ft_prometheus

    run("Prometheus #1")
    ft_prometheus.uninstall()


def test_state_history(tracked: str, capsys: pytest.CaptureFixture[str]) -> None:
    with flow_tracker.track("readme history") as tracker:
        pass
    run("State history #1", process_id=tracker.process_id)
    printed = capsys.readouterr().out
    assert "running" in printed and "completed" in printed


def test_compare_names_what_changed_since_the_last_good_run(
    tracked: str, capsys: pytest.CaptureFixture[str]
) -> None:
    namespace = run("What changed since it last worked #1")
    report = namespace["report"]
    assert report.baseline.id == namespace["yesterday"].process_id
    # Both runs take what they take: their durations may differ beyond the noise.
    assert report.summary.startswith(
        "failed (TimeoutError), 1 new flow (charge, failed), metadata key `provider` changed"
    )
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == report.summary
    assert printed[2].startswith("added charge None ")


# -- mounting the dashboard ------------------------------------------------------------


def test_fastapi_mount_answers_403_to_strangers_and_200_to_staff(tracked: str) -> None:
    from starlette.testclient import TestClient

    ns = run("Web dashboard #1")
    app = ns["app"]
    assert TestClient(app).get("/jobs/").status_code == 403  # a bare app: no user

    async def staff(scope: Any, receive: Any, send: Any) -> None:
        scope["user"] = types.SimpleNamespace(is_staff=True)
        await app(scope, receive, send)

    assert TestClient(staff).get("/jobs/").status_code == 200


def test_flask_mount(tracked: str) -> None:
    ns = run("Web dashboard #2")
    response = ns["app"].test_client().get("/jobs/")
    assert response.status_code == 200
    assert b"flow-tracker" in response.data


# -- who may do what: the host app's users as roles ----------------------------------

REAP_FORM = 'action="/jobs/health/reap"'


def test_django_mounts_give_users_the_role_their_groups_grant(
    tracked: str, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    import httpx
    from django.test import Client
    from starlette.testclient import TestClient

    from tests.support.django_site import PASSWORD, SETTINGS, django_ready

    django_ready(tmp_path_factory.mktemp("django"))  # the test project (tests/support)
    # The examples' setdefault must not leave "mysite.settings" behind for later tests.
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", SETTINGS)
    from django.contrib.auth.models import User

    User.objects.filter(username="ana").delete()
    User.objects.create_user("ana", "ana@example.com", PASSWORD)
    browser = Client()
    assert browser.login(username="ana", password=PASSWORD)
    ana = {"cookie": f"sessionid={browser.cookies['sessionid'].value}"}
    asgi = run("In a Django project #1")["application"]
    wsgi = run("In a Django project #2")["application"]
    sites: dict[str, httpx.Client] = {
        "asgi": TestClient(asgi, follow_redirects=False),
        "wsgi": httpx.Client(transport=httpx.WSGITransport(app=wsgi), base_url="http://testserver"),
    }
    for name, site in sites.items():
        anonymous = site.get("/jobs/health")
        assert anonymous.status_code == 302, name
        assert anonymous.headers["location"] == "/accounts/login/?next=/jobs/health"
        assert site.get("/jobs/health", headers=ana).status_code == 403, name  # no permission
    run("In a Django project #3")
    for name, site in sites.items():
        page = site.get("/jobs/health", headers=ana)
        assert page.status_code == 200 and REAP_FORM in page.text, name  # an operator now
        assert site.get("/hello/", headers=ana).text == "hello from django, ana", name
    asgi.dashboard.state.dashboard.store.dispose()
    wsgi.dashboard.app.dashboard.state.dashboard.store.dispose()


def test_fastapi_users_get_the_role_their_scopes_grant(tracked: str) -> None:
    from starlette.testclient import TestClient

    ns = run("In a FastAPI or Starlette app #1", password_ok=lambda _, password: password == "pw")
    browsers = {email: TestClient(ns["app"]) for email in ("ana", "bo", "cy")}
    assert browsers["ana"].get("/jobs/health").status_code == 403  # not logged in
    for name, browser in browsers.items():
        login = {"email": f"{name}@example.com", "password": "pw"}
        assert browser.post("/login", json={**login, "password": "no"}).status_code == 401
        assert browser.post("/login", json=login).status_code == 200
    assert REAP_FORM in browsers["ana"].get("/jobs/health").text  # operator
    viewer = browsers["bo"].get("/jobs/health")
    assert viewer.status_code == 200 and REAP_FORM not in viewer.text
    assert browsers["cy"].get("/jobs/health").status_code == 403  # no role


def test_flask_users_get_the_role_the_app_gives_them(tracked: str) -> None:
    ns = run("In a Flask app #1", password_ok=lambda _, password: password == "pw")
    browsers = {name: ns["app"].test_client() for name in ("ana", "bo", "cy")}
    assert browsers["ana"].get("/jobs/health").status_code == 403  # not logged in
    browsers["ana"].set_cookie("session", "forged.value.here")
    assert browsers["ana"].get("/jobs/health").status_code == 403
    for name, browser in browsers.items():
        assert browser.post("/login", data={"user": name, "password": "pw"}).status_code == 200
    assert REAP_FORM in browsers["ana"].get("/jobs/health").text  # operator
    viewer = browsers["bo"].get("/jobs/health")
    assert viewer.status_code == 200 and REAP_FORM not in viewer.text
    assert browsers["cy"].get("/jobs/health").status_code == 403  # no role


@pytest.mark.postgres
def test_a_dashboard_reads_a_replica(pg_server_url: str) -> None:
    from starlette.testclient import TestClient

    flow_tracker.configure(database_url=pg_server_url, log_to_stdlib=False)
    with flow_tracker.track("replicated nightly") as tracker:
        tracker.info("seen on the replica")
    flow_tracker.flush()
    flow_tracker.reset()
    # What a hot standby answers to every write, without running one.
    replica = f"{pg_server_url}?options=-c%20default_transaction_read_only%3Don"
    block = example("Running at scale #1")
    code = block.code.replace("postgresql://reader@replica.internal/app", replica)
    assert code != block.code, "the example's URL changed: update this test"
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    app = namespace["dashboard"]
    with TestClient(app) as client:
        assert "replicated nightly" in client.get("/processes").text
        detail = client.get(f"/processes/{tracker.process_id}")
        assert detail.status_code == 200 and "seen on the replica" in detail.text
        assert client.get("/").status_code == 200
    app.state.dashboard.store.dispose()


# -- the command lines -----------------------------------------------------------------


def test_every_command_the_reference_lists_exists() -> None:
    assert set(reference_commands()) <= set(main.commands)


def test_every_flow_tracker_line_runs_or_parses(tracked: str) -> None:
    with flow_tracker.track("readme cli") as tracker:
        tracker.info("for show and status")
    flow_tracker.flush()
    substitutions = {
        "postgresql://app@db/app": tracked,
        "<task id or process id>": str(tracker.process_id),
        "<task id>": str(tracker.process_id),
        "myapp.celery_app": "tests.integrations.celery_app",
    }
    release = threading.Event()
    fresh_runs: dict[str, Callable[[], flow_tracker.WorkflowRun]] = {
        "<run id>": _failed_run,
        "<failed run id>": _failed_run,  # a new one per line: retry, then resolve
        "<running run id>": lambda: _running_run(release),
    }
    runner = CliRunner(env={"FLOW_TRACKER_DATABASE_URL": tracked})
    for line, text in command_lines():
        for placeholder, make in fresh_runs.items():
            if placeholder in text:
                text = text.replace(placeholder, str(make().id))
        for placeholder, value in substitutions.items():
            text = text.replace(placeholder, value)
        args = arguments(text)
        if "--every" in args or args[0] == "serve":  # runs until stopped: parse only
            context = main.make_context("flow-tracker", list(args))
            command = main.get_command(context, args[0])
            assert command is not None, f"{line}: no command {args[0]}"
            command.make_context(args[0], args[1:], parent=context)
            continue
        result = runner.invoke(main, args)
        allowed = (0, 1) if args[0] == "health" else (0,)  # health: 1 means unhealthy
        assert result.exit_code in allowed, f"{line}: {text}\n{result.output}"
    release.set()


def test_demo_hint_names_the_command_as_this_shell_finds_it(tmp_path: Path) -> None:
    script = [
        sys.executable,
        "-c",
        "from flow_tracker.cli.demo import command_name; print(command_name())",
    ]
    on_path = {**os.environ, "PATH": f"{Path(bin_path('flow-tracker')).parent}{os.pathsep}"}
    off_path = {**os.environ, "PATH": "/usr/bin:/bin"}
    found = subprocess.run(script, env=on_path, capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "flow-tracker"
    hidden = subprocess.run(
        script, env=off_path, capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert hidden.stdout.strip() == bin_path("flow-tracker")


@pytest.mark.slow  # a real consumer process
def test_huey_example_runs_in_a_real_consumer(
    tracked: str, shop: Callable[..., Path], tmp_path: Path
) -> None:
    tasks = shop("Huey #1", "tasks")
    shop_tasks = importlib.import_module("shop.tasks")
    result = shop_tasks.welcome_email(42)
    assert flow_tracker.get_status(result.id).is_queued  # type: ignore[union-attr]
    log = tmp_path / "consumer.log"
    env = shop_env(tasks.parents[1], tracked)
    with worker_process(["huey_consumer", "shop.tasks.huey", "-w", "1"], env, log):
        record = wait_until_final([result.id], log)[result.id]
    assert record.status is Status.COMPLETED, (record.status, record.error)
    full = flow_tracker.get_process(record.id)
    assert full is not None and full.logs[0].message == "Sending email to user 42"


@pytest.mark.slow  # a real worker process
def test_arq_example_runs_in_a_real_worker(
    tracked: str, shop: Callable[..., Path], tmp_path: Path
) -> None:
    settings = shop("arq #1", "arq_worker")
    block = example("arq #2")
    code = block.code.replace(README_REDIS, TEST_REDIS)
    assert code != block.code, "the example's Redis URL changed: update this test"
    namespace: dict[str, Any] = {"__name__": "readme_example"}
    exec(compile(code, "README.md", "exec"), namespace)
    job_id = namespace["job_id"]
    assert flow_tracker.get_status(job_id).is_queued  # type: ignore[union-attr]
    log = tmp_path / "worker.log"
    env = shop_env(settings.parents[1], tracked)
    with worker_process(["arq", "shop.arq_worker.WorkerSettings"], env, log):
        record = wait_until_final([job_id], log)[job_id]
    assert record.status is Status.COMPLETED, (record.status, record.error)
    full = flow_tracker.get_process(record.id)
    assert full is not None and full.flows[0].logs[0].message == "Sending email to user 42"
