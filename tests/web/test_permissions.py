"""Who may do what on the dashboard: every role on every route, on SQLite and PostgreSQL.

The matrix is read from the app's own route table (``route_table()``), so a new
route is in it the day it is added: a forbidden request answers 403, changes no
row and leaves a refused audit row; an allowed read answers 200; an allowed
action is done, and kept under the principal's name. Then the ways in: the auth
hook's answers, several basic-auth users with roles, API tokens, read-only, and
``Authorization`` headers no client should send.
"""

from __future__ import annotations

import base64
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from sqlalchemy import func, insert, select, update
from starlette.requests import Request
from starlette.responses import RedirectResponse
from starlette.testclient import TestClient

import flow_tracker
from flow_tracker.cli import main
from flow_tracker.errors import UsageError
from flow_tracker.heartbeat import HEARTBEAT
from flow_tracker.permissions import ROLES, WRITE_PERMISSIONS, Principal
from flow_tracker.store import schema, tokens
from flow_tracker.store.clock import database_now
from flow_tracker.store.engine import Store
from flow_tracker.web import create_app
from flow_tracker.web.app import WORKFLOW_ACTIONS, GuardedRoute, route_table
from flow_tracker.web.security import CSRF_COOKIE, parse_basic_auth
from flow_tracker.workflows import threads
from tests.web.conftest import ORIGIN, record_sample

WAIT = 30.0

PRINCIPALS = {
    "viewer": Principal("vera", role="viewer"),
    "reader": Principal("rene", role="reader"),
    "operator": Principal("olga", role="operator"),
    "admin": Principal("adam", role="admin"),
    "operator_without_payloads": Principal(
        "otto", permissions=ROLES["operator"] - {"payloads:read"}
    ),
}


def as_header(request: Request) -> Principal | None:
    """The auth hook of these tests: ``X-As: <role>`` picks a principal; none, no entry."""
    return PRINCIPALS.get(request.headers.get("x-as", ""))


perm_failing = flow_tracker.workflow("perm_failing")


@perm_failing.step()
def boom(context: Any) -> None:
    raise ValueError("card 4242 declined")


perm_blocked = flow_tracker.workflow("perm_blocked")
RELEASE = threading.Event()


@perm_blocked.step()
def hold(context: Any) -> None:
    RELEASE.wait(WAIT)


# -- the route table, as cases ----------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One route and method (and workflow action) of the app, and what it needs."""

    name: str
    method: str
    action: str | None
    permission: str | None

    @property
    def id(self) -> str:
        return f"{self.name}-{self.method}" + (f"-{self.action}" if self.action else "")

    @property
    def changes_data(self) -> bool:
        return self.method == "POST"


ROUTES = {r.name: r for r in route_table() if isinstance(r, GuardedRoute)}


def _cases() -> list[Case]:
    found = []
    for route in ROUTES.values():
        for method in sorted((route.methods or {"GET"}) - {"HEAD"}):
            actions: list[str | None] = (
                list(WORKFLOW_ACTIONS) if "action" in route.param_convertors else [None]
            )
            for action in actions:
                params = {"action": action} if action else {}
                found.append(Case(route.name, method, action, route.permission_for(params)))
    return found


CASES = _cases()
FORBIDDEN = [
    pytest.param(case, role, id=f"{role}-{case.id}")
    for case in CASES
    for role, principal in PRINCIPALS.items()
    if case.permission is not None and not principal.can(case.permission)
]
ALLOWED_READS = [
    pytest.param(case, role, id=f"{role}-{case.id}")
    for case in CASES
    for role, principal in PRINCIPALS.items()
    if not case.changes_data and (case.permission is None or principal.can(case.permission))
]
ALLOWED_ACTIONS = [
    pytest.param(case, role, id=f"{role}-{case.id}")
    for case in CASES
    for role, principal in PRINCIPALS.items()
    if case.changes_data and case.permission is not None and principal.can(case.permission)
]

# What each action is sent (the forms and bodies a real page or client sends).
FORMS: dict[str, dict[str, str]] = {
    "cleanup_run-POST": {"days": "0", "confirm": "yes"},
    "health_requeue-POST": {"all": "lost"},
    "workflow_action-POST-retry": {"step": "boom", "reason": "card fixed"},
    "workflow_action-POST-resolve": {"step": "boom", "result": '"paid"', "reason": "by phone"},
    "workflow_action-POST-cancel": {"reason": "customer left"},
    "workflow_action-POST-retry-failed": {"reason": "all of them"},
    "workflow_start-POST": {"namespace": "default", "name": "perm_failing", "context": "{}"},
}
BODIES: dict[str, dict[str, Any]] = {
    "api_workflow_retry_failed-POST": {"reason": "from the api"},
    "api_workflow_start-POST": {"context": {"cart": 1}, "reason": "from the api"},
}
QUERIES = {"workflow_start_form-GET": "?namespace=default&name=perm_failing"}
# Reads that answer other than 200 on this data: a health probe of an unhealthy system.
READ_STATUS = {"api_health-GET": 503}


@dataclass
class Targets:
    """What the routes' path parameters name: a process, a run, a workflow."""

    process_id: str
    run_id: uuid.UUID


def _path(case: Case, targets: Targets) -> str:
    route = ROUTES[case.name]
    values: dict[str, Any] = {
        "process_id": targets.process_id,
        "ident": targets.process_id,
        "run_id": targets.run_id,
        "action": case.action,
        "namespace": "default",
        "name": "perm_failing",
    }
    params = {k: str(values[k]) for k in route.param_convertors}
    return str(route.url_path_for(case.name, **params)) + QUERIES.get(case.id, "")


def _send(client: TestClient, case: Case, targets: Targets, role: str) -> Any:
    path = _path(case, targets)
    headers = {"x-as": role, "origin": ORIGIN}
    if case.method == "GET":
        return client.get(path, headers=headers, follow_redirects=False)
    if path.startswith("/api/"):
        return client.post(path, json=BODIES.get(case.id, {}), headers=headers)
    client.get("/", headers={"x-as": role})  # the CSRF cookie, as a page gives it
    form = {"csrf_token": client.cookies.get(CSRF_COOKIE) or "", **FORMS.get(case.id, {})}
    return client.post(path, data=form, headers=headers, follow_redirects=False)


# -- the database's state ---------------------------------------------------------------------

# Tables a request may write without changing the data: the audit log (refusals),
# tokens' last use, the rollups and the state a page view refreshes.
UNWATCHED = {
    schema.audit_log.name,
    schema.api_tokens.name,
    "flow_tracker_rollup_counts",
    "flow_tracker_rollup_durations",
    "flow_tracker_state",
}


def fingerprint(store: Store) -> dict[str, Any]:
    """Every watched table's row count, and every process's, run's and step's status."""
    shot: dict[str, Any] = {}
    with store.engine.connect() as conn:
        for table in schema.metadata.sorted_tables:
            if table.name not in UNWATCHED:
                shot[table.name] = conn.execute(select(func.count()).select_from(table)).scalar()
        p, r, s = schema.processes.c, schema.workflow_runs.c, schema.workflow_steps.c
        shot["processes"] = sorted((str(i), st) for i, st in conn.execute(select(p.id, p.status)))
        shot["runs"] = sorted((str(i), st) for i, st in conn.execute(select(r.id, r.status)))
        shot["steps"] = sorted(
            (str(i), n, st, a)
            for i, n, st, a in conn.execute(select(s.run_id, s.name, s.status, s.attempts))
        )
    return shot


def refusals(store: Store, actor: str, action: str) -> int:
    """How many refusals of ``action`` by ``actor`` the audit log counts."""
    a = schema.audit_log.c
    with store.engine.connect() as conn:
        found = conn.execute(
            select(func.coalesce(func.sum(a.times), 0)).where(
                a.actor == actor, a.action == action, a.outcome == "refused"
            )
        ).scalar()
    return int(found or 0)


def history(store: Store, run_id: uuid.UUID) -> list[str]:
    """The reasons in a run's (or process's) state history."""
    t = schema.transitions.c
    with store.engine.connect() as conn:
        return [r for (r,) in conn.execute(select(t.reason).where(t.process_id == run_id)) if r]


def _silence(store: Store, process_id: str) -> None:
    """The process's worker died two minutes ago: no heartbeat since."""
    HEARTBEAT.clear()
    with store.engine.begin() as conn:
        old = database_now(conn) - timedelta(minutes=2)
        conn.execute(
            update(schema.processes)
            .where(schema.processes.c.id == uuid.UUID(process_id))
            .values(heartbeat_at=old)
        )


def _lost_job(store: Store) -> uuid.UUID:
    """A lost job of a queue this process has no integration for: a requeue waits for one."""
    process_id = uuid.uuid4()
    with store.engine.begin() as conn:
        now = database_now(conn)
        conn.execute(
            insert(schema.processes).values(
                id=process_id,
                name="charge",
                category="jobs",
                status="lost",
                created_at=now,
                finished_at=now,
                job_system="permq",
                job_id=uuid.uuid4().hex,
                queue="default",
                job_payload={"task": "app.charge", "args": [1]},
            )
        )
    return process_id


def _failed_run() -> uuid.UUID:
    run = perm_failing.run(context={"cart": 1})
    assert run.wait(WAIT).status == "failed"
    return run.id


# -- the matrix on data built once per module and backend -------------------------------------


@dataclass
class World:
    """A tracking database with one of everything an action acts on, and the app on it."""

    url: str
    store: Store
    client: TestClient
    targets: Targets
    running: str


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    """The sample processes, a failed run, a silent job and a lost one, on each backend.

    Its own PostgreSQL database: the per-test fixtures empty the shared one.
    """
    drop: Callable[[], None] = lambda: None  # noqa: E731
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('permissions') / 'tracker.db'}"
    else:
        server: str = request.getfixturevalue("pg_server_url")
        base, _, name = server.rpartition("/")
        own = f"{name}_permissions"
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{own}"')

        def drop() -> None:
            with psycopg.connect(server, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{own}" WITH (FORCE)')

        url = f"{base}/{own}"
    flow_tracker.configure(database_url=url, log_to_stdlib=False)
    try:
        imported, _, running = record_sample()
        run_id = _failed_run()
        flow_tracker.flush()
        store = Store(url)
        _silence(store, running)
        _lost_job(store)
    finally:
        threads.wait_idle(10.0)
        flow_tracker.reset()
    app = create_app(url, auth=as_header, keep_statistics=False)
    with TestClient(app, base_url=ORIGIN) as client:
        yield World(url, store, client, Targets(imported, run_id), running)
    app.state.dashboard.store.dispose()
    store.dispose()
    drop()


def test_every_route_of_the_app_declares_its_permission() -> None:
    app = create_app("sqlite://", keep_statistics=False, graphql=True)
    for route in app.routes:
        if isinstance(route, GuardedRoute):
            continue
        # Static files are the only unguarded route: being let in is enough for a stylesheet.
        assert getattr(route, "path", "") == "/static", route
    assert {c.name for c in CASES} == set(ROUTES)
    # The workflow action route checks the permission of the action in its path.
    for action, permission in WORKFLOW_ACTIONS.items():
        assert ROUTES["workflow_action"].permission_for({"action": action}) == permission
    app.state.dashboard.store.dispose()


@pytest.mark.parametrize(("case", "role"), FORBIDDEN)
def test_a_forbidden_request_is_403_changes_nothing_and_is_audited(
    world: World, case: Case, role: str
) -> None:
    assert case.permission is not None
    principal = PRINCIPALS[role]
    before = fingerprint(world.store)
    refused_before = refusals(world.store, principal.name, case.permission)
    response = _send(world.client, case, world.targets, role)
    assert response.status_code == 403, response.text[:300]
    if _path(case, world.targets).startswith("/api/"):
        assert response.json()["status"] == 403
        assert case.permission in response.json()["error"]
    else:
        assert response.headers["content-type"].startswith("text/html")
        assert case.permission in response.text
    assert fingerprint(world.store) == before
    assert refusals(world.store, principal.name, case.permission) == refused_before + 1


@pytest.mark.parametrize(("case", "role"), ALLOWED_READS)
def test_an_allowed_read_answers_200_and_changes_nothing(
    world: World, case: Case, role: str
) -> None:
    before = fingerprint(world.store)
    response = _send(world.client, case, world.targets, role)
    assert response.status_code == READ_STATUS.get(case.id, 200), response.text[:300]
    assert fingerprint(world.store) == before


def test_static_files_need_only_to_be_let_in(world: World) -> None:
    for role in PRINCIPALS:
        assert world.client.get("/static/app.css", headers={"x-as": role}).status_code == 200
    assert world.client.get("/static/app.css").status_code == 403  # the hook said None


@pytest.mark.parametrize("role", list(PRINCIPALS))
def test_pages_show_only_the_actions_the_principal_may_do(world: World, role: str) -> None:
    principal = PRINCIPALS[role]
    headers = {"x-as": role}
    overview = world.client.get("/", headers=headers).text
    assert ('href="/cleanup"' in overview) == principal.can("history:delete")
    assert ('href="/audit"' in overview) == principal.can("audit:read")
    health = world.client.get("/health", headers=headers).text
    assert ("Reap now" in health) == principal.can("jobs:reap")
    assert ("Requeue all" in health) == principal.can("jobs:requeue")
    run = world.client.get(f"/workflows/{world.targets.run_id}", headers=headers).text
    assert ("Retry failed steps" in run) == principal.can("workflows:retry")
    assert ("Retry step" in run) == principal.can("workflows:retry")
    assert ("Resolve step" in run) == principal.can("workflows:resolve")
    assert ("Run again" in run) == principal.can("workflows:start")
    definitions = world.client.get("/workflows/definitions", headers=headers).text
    assert ("Start run" in definitions) == principal.can("workflows:start")


# -- allowed actions, each on fresh data ------------------------------------------------------


@dataclass
class Fresh:
    """A fresh database (the test's backend) with what one action acts on."""

    store: Store
    client: TestClient
    targets: Targets


@pytest.fixture
def fresh(tracked: str) -> Iterator[Fresh]:
    store = Store(tracked)
    store.ensure_schema()
    app = create_app(tracked, auth=as_header, keep_statistics=False)
    try:
        with TestClient(app, base_url=ORIGIN) as client:
            yield Fresh(store, client, Targets(str(uuid.uuid4()), uuid.uuid4()))
    finally:
        RELEASE.set()
        app.state.dashboard.store.dispose()
        store.dispose()


def _runs(store: Store) -> int:
    with store.engine.connect() as conn:
        return int(
            conn.execute(select(func.count()).select_from(schema.workflow_runs)).scalar_one()
        )


def _status(store: Store, process_id: Any) -> str:
    with store.engine.connect() as conn:
        return str(
            conn.execute(
                select(schema.processes.c.status).where(
                    schema.processes.c.id == uuid.UUID(str(process_id))
                )
            ).scalar_one()
        )


def _outbox(store: Store) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(schema.outbox)).scalar_one())


def _settled(run_id: uuid.UUID) -> str:
    return flow_tracker.WorkflowRun(run_id, "").wait(WAIT).status


@pytest.mark.parametrize(("case", "role"), ALLOWED_ACTIONS)
def test_an_allowed_action_is_done_and_kept_under_the_principals_name(
    fresh: Fresh, case: Case, role: str
) -> None:
    name = PRINCIPALS[role].name
    store, targets = fresh.store, fresh.targets
    if case.id == "cleanup_run-POST":
        with flow_tracker.track("Done") as done:
            pass
        flow_tracker.flush()
        response = _send(fresh.client, case, targets, role)
        assert response.status_code == 303, response.text[:300]
        assert flow_tracker.get_process(done.process_id) is None
    elif case.id == "health_reap-POST":
        job = flow_tracker.start("Silent")
        flow_tracker.flush()
        _silence(store, str(job.process_id))
        response = _send(fresh.client, case, targets, role)
        assert response.status_code == 303, response.text[:300]
        assert _status(store, job.process_id) == "lost"
    elif case.id == "health_requeue-POST":
        lost = _lost_job(store)
        before = _outbox(store)
        response = _send(fresh.client, case, targets, role)
        assert response.status_code == 303, response.text[:300]
        assert "waiting=" in response.headers["location"]
        assert _outbox(store) == before + 1  # kept for a worker of its queue
        assert _status(store, lost) == "lost"
    elif case.id == "workflow_action-POST-cancel":
        RELEASE.clear()
        run = perm_blocked.run(context={})
        targets.run_id = run.id
        response = _send(fresh.client, case, targets, role)
        assert response.status_code == 303, response.text[:300]
        assert flow_tracker.get_workflow(run.id).status == "cancelled"
        RELEASE.set()
        assert any(f"by {name}" in r for r in history(store, run.id))
    elif case.name in ("workflow_action", "api_workflow_retry_failed"):
        targets.run_id = _failed_run()
        response = _send(fresh.client, case, targets, role)
        assert response.status_code in (200, 303), response.text[:300]
        if case.action == "resolve":
            assert _settled(targets.run_id) == "completed"
        else:
            assert _settled(targets.run_id) == "failed"  # ran again, and failed again
        verb = "resolved" if case.action == "resolve" else "retried"
        assert any(
            r.startswith(f"{verb} step boom by {name}") for r in history(store, targets.run_id)
        )
    elif case.name in ("workflow_start", "api_workflow_start"):
        _failed_run()  # records the definition a start needs
        before = _runs(store)
        response = _send(fresh.client, case, targets, role)
        assert response.status_code in (201, 303), response.text[:300]
        assert _runs(store) == before + 1
        if case.name == "api_workflow_start":
            started = uuid.UUID(response.json()["id"])
        else:
            started = uuid.UUID(response.headers["location"].split("/")[2].split("?")[0])
        assert any(f"by {name} via" in r for r in history(store, started))
    else:
        pytest.fail(f"no check for the action {case.id}: add one")
    # The library kept it, as the principal, from this request.
    a = schema.audit_log.c
    with store.engine.connect() as conn:
        kept = conn.execute(
            select(a.role, a.via, a.client).where(
                a.actor == name, a.action == case.permission, a.outcome == "allowed"
            )
        ).all()
    assert kept, f"no audit row of {case.permission} by {name}"
    assert {tuple(row) for row in kept} == {(PRINCIPALS[role].role_label, "hook", "testclient")}


def test_every_action_of_the_route_table_has_a_check_above() -> None:
    checked = {
        "cleanup_run-POST",
        "health_reap-POST",
        "health_requeue-POST",
        "workflow_action-POST-cancel",
        "workflow_action-POST-retry",
        "workflow_action-POST-retry-failed",
        "workflow_action-POST-resolve",
        "api_workflow_retry_failed-POST",
        "workflow_start-POST",
        "api_workflow_start-POST",
    }
    assert {c.id for c in CASES if c.changes_data} == checked
    # Every action is a write: read-only takes it away from everyone.
    assert all(c.permission in WRITE_PERMISSIONS for c in CASES if c.changes_data)


# -- read-only --------------------------------------------------------------------------------


def test_read_only_takes_every_action_from_everyone_and_says_why(world: World) -> None:
    app = create_app(world.url, auth=as_header, read_only=True, keep_statistics=False)
    try:
        with TestClient(app, base_url=ORIGIN) as client:
            before = fingerprint(world.store)
            for case in CASES:
                response = _send(client, case, world.targets, "admin")
                if case.permission in WRITE_PERMISSIONS:
                    assert response.status_code == 403, case.id
                    assert "read-only" in response.text, case.id
                else:
                    assert response.status_code == READ_STATUS.get(case.id, 200), case.id
            assert fingerprint(world.store) == before
            headers = {"x-as": "admin"}
            assert 'href="/cleanup"' not in client.get("/", headers=headers).text
            assert 'method="post"' not in client.get("/health", headers=headers).text
            run = client.get(f"/workflows/{world.targets.run_id}", headers=headers).text
            assert 'method="post"' not in run and "Run again" not in run
            # Reading the audit log changes nothing: read-only keeps it.
            assert client.get("/audit", headers=headers).status_code == 200
    finally:
        app.state.dashboard.store.dispose()


# -- the auth hook's answers ------------------------------------------------------------------


def _hooked(world: World, hook: Any) -> Iterator[TestClient]:
    app = create_app(world.url, auth=hook, keep_statistics=False)
    try:
        with TestClient(app, base_url=ORIGIN) as client:
            yield client
    finally:
        app.state.dashboard.store.dispose()


def test_a_hooks_principal_is_used_as_it_is(world: World) -> None:
    async def hook(request: Request) -> Principal:
        return Principal("ana@example.com", role="viewer", via="sso")

    for client in _hooked(world, hook):
        assert client.get("/processes").status_code == 200
        assert client.get("/cleanup").status_code == 403
        a = schema.audit_log.c
        with world.store.engine.connect() as conn:
            row = conn.execute(
                select(a.role, a.via).where(
                    a.actor == "ana@example.com", a.action == "history:delete"
                )
            ).first()
        assert row is not None and tuple(row) == ("viewer", "sso")


def test_a_hook_that_says_true_lets_an_admin_in(world: World) -> None:
    for client in _hooked(world, lambda request: True):
        assert client.get("/cleanup").status_code == 200
        assert 'href="/cleanup"' in client.get("/").text


@pytest.mark.parametrize("answer", [None, False])
def test_a_hook_that_says_none_or_false_answers_403(world: World, answer: Any) -> None:
    for client in _hooked(world, lambda request: answer):
        assert client.get("/").status_code == 403
        assert client.get("/api/processes").json()["status"] == 403


def test_a_hooks_response_is_sent_as_it_is(world: World) -> None:
    def to_login(request: Request) -> RedirectResponse:
        return RedirectResponse("/login?next=" + request.url.path, status_code=302)

    for client in _hooked(world, to_login):
        response = client.get("/processes", follow_redirects=False)
        assert response.status_code == 302
        assert response.headers["location"] == "/login?next=/processes"
        assert response.headers["x-frame-options"] == "DENY"  # our headers still on it


def test_a_hook_that_raises_answers_403_and_is_logged_once(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(request: Request) -> bool:
        raise RuntimeError("no session middleware")

    caplog.set_level(logging.ERROR, logger="flow_tracker.web")
    for client in _hooked(world, broken):
        assert client.get("/").status_code == 403
        assert client.get("/api/processes").status_code == 403
    logged = [r for r in caplog.records if "auth hook raised" in r.getMessage()]
    assert len(logged) == 1


def test_a_principal_with_an_unknown_permission_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="unknown permission"):
        Principal("x", permissions={"job:requeue"})
    with pytest.raises(UsageError, match="auth"):
        create_app("sqlite://", auth="admin")  # type: ignore[arg-type]


# -- basic auth with several users ------------------------------------------------------------


def _basic(user: str, password: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_several_basic_auth_users_each_get_their_role(world: World) -> None:
    users: list[tuple[str, str] | tuple[str, str, str]] = [
        ("ops", "pw:1", "operator"),
        ("ana", "pw2", "viewer"),
        ("root", "pw3"),
    ]
    app = create_app(world.url, basic_auth=users, keep_statistics=False)
    try:
        with TestClient(app, base_url=ORIGIN) as client:
            assert client.get("/processes", headers=_basic("ana", "pw2")).status_code == 200
            assert client.get("/cleanup", headers=_basic("ana", "pw2")).status_code == 403
            assert client.get("/cleanup", headers=_basic("ops", "pw:1")).status_code == 403
            ops_page = client.get(
                f"/workflows/{world.targets.run_id}", headers=_basic("ops", "pw:1")
            )
            assert "Retry step" in ops_page.text
            assert client.get("/cleanup", headers=_basic("root", "pw3")).status_code == 200
            for user, password in [("ana", "pw3"), ("root", "pw2"), ("nobody", "pw2"), ("", "")]:
                response = client.get("/", headers=_basic(user, password))
                assert response.status_code == 401, user
                assert response.headers["www-authenticate"].startswith("Basic")
            assert refusals(world.store, "ana", "history:delete") >= 1
            a = schema.audit_log.c
            with world.store.engine.connect() as conn:
                via = conn.execute(select(a.via).where(a.actor == "ana")).scalars().first()
            assert via == "basic:ana"
    finally:
        app.state.dashboard.store.dispose()


@pytest.mark.parametrize(
    "bad",
    [
        ("admin", ""),
        ("", "pw"),
        [("a", "pw", "root")],
        [("a", "pw", "viewer", "extra")],
        [("a:b", "pw")],
        [("a", "pw"), ("a", "pw2")],
        [],
        "admin:pw",
        [("a", 1)],
    ],
    ids=[
        "empty-password",
        "empty-user",
        "unknown-role",
        "four-fields",
        "colon-in-user",
        "twice",
        "empty-list",
        "a-string",
        "not-strings",
    ],
)
def test_a_bad_basic_auth_is_refused_at_create_app(bad: Any) -> None:
    with pytest.raises(UsageError, match=r"basic_auth|role"):
        create_app("sqlite://", basic_auth=bad)


def test_a_bad_basic_auth_entry_is_refused_without_showing_its_password() -> None:
    four_fields: Any = ("ops", "hunter2", "operator", "x")
    with pytest.raises(UsageError, match="user 2 of the list") as caught:
        create_app("sqlite://", basic_auth=[("ro", "pw"), four_fields])
    assert "hunter2" not in str(caught.value)


def test_the_command_lines_basic_auth_reads_roles_and_passwords_with_colons_and_commas() -> None:
    assert parse_basic_auth("u1:p1,u2:p2:operator") == [
        ("u1", "p1", "admin"),
        ("u2", "p2", "operator"),
    ]
    assert parse_basic_auth("ops:a:b") == [("ops", "a:b", "admin")]
    assert parse_basic_auth("ops:a:b:viewer") == [("ops", "a:b", "viewer")]
    assert parse_basic_auth("ops:a,b") == [("ops", "a,b", "admin")]
    assert parse_basic_auth("ops:pw:viewer:admin") == [("ops", "pw:viewer", "admin")]
    for bad in ("s3cr3t", "ops:", ":s3cr3t", "ops:s3cr3t,:x", "ops::viewer"):
        with pytest.raises(UsageError, match="USER:PASSWORD") as caught:
            parse_basic_auth(bad)
        assert "s3cr3t" not in str(caught.value)  # what was typed may be a password


def test_serve_takes_several_users_from_its_environment_variable(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn

    store = Store(sqlite_url)
    store.ensure_schema()
    store.dispose()
    served: list[Any] = []
    # Only the server loop is replaced: everything serve builds is the real app.
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: served.append(app))
    monkeypatch.setenv("FLOW_TRACKER_BASIC_AUTH", "ops:s3:cret:operator,ana:pw")
    result = CliRunner().invoke(main, ["serve", "--database-url", sqlite_url])
    assert result.exit_code == 0, result.output
    (app,) = served
    client = TestClient(app, base_url="http://localhost")
    assert client.get("/").status_code == 401
    assert client.get("/", headers=_basic("ops", "s3:cret")).status_code == 200
    assert client.get("/cleanup", headers=_basic("ops", "s3:cret")).status_code == 403
    assert client.get("/cleanup", headers=_basic("ana", "pw")).status_code == 200
    app.state.dashboard.store.dispose()
    monkeypatch.setenv("FLOW_TRACKER_BASIC_AUTH", "ops:secret-pw,:no-user")
    refused = CliRunner().invoke(main, ["serve", "--database-url", sqlite_url])
    assert refused.exit_code != 0 and "--basic-auth" in refused.output
    assert "secret-pw" not in refused.output


# -- Authorization headers no client should send ----------------------------------------------

BAD_HEADERS = {
    "forged": _basic("admin@example.com", "guess")["authorization"],
    "empty": "",
    "scheme-only": "Basic",
    "not-base64": "Basic !!!not base64!!!",
    "no-colon": "Basic " + base64.b64encode(b"admin").decode(),
    "not-utf8": "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode(),
    "10-kb": "Basic " + "A" * 10_240,
    "bearer-garbage": "Bearer garbage",
    "bearer-token-garbage": "Bearer ft_garbage",
    "bearer-empty-token": "Bearer ft_",
}


@pytest.mark.parametrize("header", list(BAD_HEADERS), ids=list(BAD_HEADERS))
def test_a_bad_authorization_header_is_a_clean_401(world: World, header: str) -> None:
    app = create_app(world.url, basic_auth=("admin", "s3cret"), keep_statistics=False)
    try:
        with TestClient(app, base_url=ORIGIN) as client:
            for path in ("/api/processes", "/metrics"):
                response = client.get(path, headers={"authorization": BAD_HEADERS[header]})
                assert response.status_code == 401, path
                assert response.headers["www-authenticate"]
            page = client.get("/processes", headers={"authorization": BAD_HEADERS[header]})
            # A token on a page is refused for being one (403); anything else asks again.
            assert page.status_code == (403 if "ft_" in BAD_HEADERS[header] else 401)
    finally:
        app.state.dashboard.store.dispose()


def test_a_non_ascii_authorization_header_is_a_clean_401(world: World) -> None:
    app = create_app(world.url, basic_auth=("admin", "s3cret"), auth=as_header)
    try:
        with TestClient(app, base_url=ORIGIN) as client:
            for value in ("Basic é".encode("latin-1"), b"Bearer ft_\xe9\xe9", b"Basic \x7f"):
                for path in ("/", "/api/processes"):
                    response = client.get(path, headers={"authorization": value})
                    assert response.status_code == 401, (value, path)
    finally:
        app.state.dashboard.store.dispose()


def test_a_bad_bearer_token_is_401_on_an_app_with_a_hook_too(world: World) -> None:
    for client in _hooked(world, as_header):
        response = client.get(
            "/api/processes", headers={"authorization": "Bearer ft_abc_def", "x-as": "admin"}
        )
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
        # A Bearer credential that is not ours is the host app's: the hook decides.
        host = client.get(
            "/api/processes", headers={"authorization": "Bearer eyJhbGciOi", "x-as": "viewer"}
        )
        assert host.status_code == 200


# -- API tokens -------------------------------------------------------------------------------


def test_api_tokens_open_the_api_and_metrics_only_and_stop_when_revoked(world: World) -> None:
    viewer = tokens.create(world.store, name=f"ci-{uuid.uuid4().hex[:6]}", role="viewer")
    operator = tokens.create(world.store, name=f"ops-{uuid.uuid4().hex[:6]}", role="operator")
    bearer = {"authorization": f"Bearer {viewer.token}"}
    app = create_app(world.url, basic_auth=("admin", "s3cret"), keep_statistics=False)
    try:
        with TestClient(app, base_url=ORIGIN) as client:
            assert client.get("/api/processes", headers=bearer).status_code == 200
            assert client.get("/metrics", headers=bearer).status_code == 200
            assert client.get("/processes", headers=bearer).status_code == 403
            assert client.get("/api/audit", headers=bearer).status_code == 403
            path = f"/api/workflows/{world.targets.run_id}/retry-failed"
            before = fingerprint(world.store)
            refused = client.post(path, json={}, headers=bearer)
            assert refused.status_code == 403
            assert fingerprint(world.store) == before
            assert refusals(world.store, viewer.record.name, "workflows:retry") == 1
            ops = {"authorization": f"Bearer {operator.token}"}
            # An operator token may act, never administer.
            assert client.get("/api/audit", headers=ops).status_code == 403
            assert tokens.revoke(world.store, viewer.record.name)
            gone = client.get("/api/processes", headers=bearer)
            assert gone.status_code == 401
            assert gone.headers["www-authenticate"].startswith("Bearer")
    finally:
        tokens.revoke(world.store, operator.record.name)
        app.state.dashboard.store.dispose()


def test_an_expired_token_is_401(world: World) -> None:
    made = tokens.create(
        world.store, name=f"old-{uuid.uuid4().hex[:6]}", role="reader", expires_in=timedelta(days=1)
    )
    with world.store.engine.begin() as conn:
        conn.execute(
            update(schema.api_tokens)
            .where(schema.api_tokens.c.name == made.record.name)
            .values(expires_at=database_now(conn) - timedelta(seconds=1))
        )
    for client in _hooked(world, as_header):
        response = client.get("/api/stats", headers={"authorization": f"Bearer {made.token}"})
        assert response.status_code == 401


def test_an_operator_token_retries_a_run_as_its_name(fresh: Fresh) -> None:
    made = tokens.create(fresh.store, name="deploy-bot", role="operator")
    run_id = _failed_run()
    response = fresh.client.post(
        f"/api/workflows/{run_id}/retry-failed",
        json={"reason": "deploy"},
        headers={"authorization": f"Bearer {made.token}"},
    )
    assert response.status_code == 200, response.text
    assert _settled(run_id) == "failed"
    assert any(
        r.startswith("retried step boom by deploy-bot") for r in history(fresh.store, run_id)
    )


# -- who acts ---------------------------------------------------------------------------------


def test_the_history_keeps_the_principal_not_a_forged_header(fresh: Fresh, tracked: str) -> None:
    app = create_app(tracked, keep_statistics=False)  # no auth: "dashboard"
    run_id = _failed_run()
    try:
        with TestClient(app, base_url=ORIGIN) as client:
            client.get("/")
            response = client.post(
                f"/workflows/{run_id}/retry",
                data={"csrf_token": client.cookies.get(CSRF_COOKIE) or "", "step": "boom"},
                headers={"origin": ORIGIN, **_basic("admin@example.com", "x")},
                follow_redirects=False,
            )
            assert response.status_code == 303
    finally:
        app.state.dashboard.store.dispose()
    _settled(run_id)
    reasons = history(fresh.store, run_id)
    assert any(r.startswith("retried step boom by dashboard") for r in reasons)
    assert not any("admin@example.com" in r for r in reasons)


def test_refusals_are_kept_with_the_client_and_the_request_id(world: World) -> None:
    # Names of this test's own: refusals are coalesced per actor, action and minute.
    sane, insane = (Principal(f"{kind}-{uuid.uuid4().hex[:8]}", role="viewer") for kind in "ab")
    a = schema.audit_log.c
    sent = f"req-{uuid.uuid4().hex[:8]}"
    for client in _hooked(world, lambda request: sane if "x-sane" in request.headers else insane):
        response = client.get("/cleanup", headers={"x-sane": "1", "x-request-id": sent})
        assert response.status_code == 403 and response.headers["x-request-id"] == sent
        refused = client.get("/cleanup", headers={"x-request-id": "x" * 65})
        made = refused.headers["x-request-id"]
        assert len(made) == 32 and made != "x" * 65  # a new id, not what was sent
    with world.store.engine.connect() as conn:
        rows = conn.execute(
            select(a.actor, a.client, a.request_id).where(
                a.action == "history:delete", a.actor.in_([sane.name, insane.name])
            )
        ).all()
    assert {tuple(r) for r in rows} == {
        (sane.name, "testclient", sent),
        (insane.name, "testclient", made),
    }
