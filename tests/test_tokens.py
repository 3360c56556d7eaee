"""API tokens: made once, stored hashed, verified by database time, revoked by name; both databases.

``verify`` is what the dashboard calls with whatever an ``Authorization`` header
held, so it is fed everything a client can send and must answer None, never
raise. The HTTP side is ``tests/web/test_tokens_http.py``.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import event, select, update
from sqlalchemy.exc import DBAPIError, OperationalError

from flow_tracker import UsageError
from flow_tracker.actors import Actor, acting_as
from flow_tracker.cli import main
from flow_tracker.store import tokens
from flow_tracker.store.clock import now_sql
from flow_tracker.store.engine import Store
from flow_tracker.store.schema import api_tokens, audit_log


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    """A store on an empty database of each backend, schema in place."""
    made = Store(database_url)
    made.ensure_schema()
    yield made
    made.dispose()


def secret_of(token: str) -> str:
    return token.split("_", 2)[2]


def row_of(store: Store, name: str) -> Any:
    with store.engine.connect() as conn:
        return conn.execute(
            select(api_tokens).where(api_tokens.c.name == name).order_by(api_tokens.c.created_at)
        ).all()[-1]


def set_columns(store: Store, name: str, **values: Any) -> None:
    with store.engine.begin() as conn:
        conn.execute(update(api_tokens).where(api_tokens.c.name == name).values(**values))


def audit_rows(store: Store) -> list[Any]:
    with store.engine.connect() as conn:
        return list(
            conn.execute(
                select(audit_log)
                .where(audit_log.c.action == "tokens:manage")
                .order_by(audit_log.c.id)
            ).all()
        )


def everything_stored(store: Store) -> str:
    """Every value of the token and audit tables, as one text to search a secret in."""
    with store.engine.connect() as conn:
        rows = [*conn.execute(select(api_tokens)).all(), *conn.execute(select(audit_log)).all()]
    return json.dumps([list(row) for row in rows], default=str)


# -- create, list, revoke --------------------------------------------------------------


def test_a_token_is_returned_once_and_only_its_secrets_hash_is_stored(store: Store) -> None:
    made = tokens.create(store, name="ci", role="viewer")
    prefix, token_id, secret = made.token.split("_", 2)
    assert prefix == "ft" and token_id == made.record.id and len(token_id) == 12
    assert token_id.isalnum() and token_id == token_id.lower()
    assert len(secret) >= 43
    row = row_of(store, "ci")
    assert row.secret_sha256 == hashlib.sha256(secret.encode()).hexdigest()
    stored = everything_stored(store)
    assert secret not in stored and made.token not in stored
    assert secret not in repr(made)  # logging the result does not log the token


def test_list_shows_active_and_expired_tokens_and_revoked_ones_when_asked(store: Store) -> None:
    tokens.create(store, name="ci", role="viewer")
    tokens.create(store, name="grafana", role="reader", expires_in=timedelta(days=90))
    tokens.create(store, name="ops bot", role="operator")
    assert tokens.revoke(store, "ops bot") is True
    listed = tokens.list_tokens(store)
    assert [(t.name, t.role, t.status) for t in listed] == [
        ("ci", "viewer", "active"),
        ("grafana", "reader", "active"),
    ]
    grafana = listed[1]
    assert grafana.expires_at is not None
    assert timedelta(days=89) < grafana.expires_at - grafana.created_at <= timedelta(days=90)
    every = {t.name: t for t in tokens.list_tokens(store, include_revoked=True)}
    assert every["ops bot"].status == "revoked" and every["ops bot"].revoked_at is not None
    assert every["ops bot"].revoked_by
    assert "secret" not in json.dumps(every["ci"].to_dict())


def test_revoking_an_unknown_or_revoked_name_is_false_and_changes_nothing(store: Store) -> None:
    tokens.create(store, name="ci", role="viewer")
    assert tokens.revoke(store, "ci") is True
    before = audit_rows(store)
    for name in ("ci", "nobody", "", "x\x00y", "\udcff", "L" * 10_000):
        assert tokens.revoke(store, name) is False
    assert audit_rows(store) == before


def test_admin_and_unknown_roles_are_refused(store: Store) -> None:
    with pytest.raises(UsageError, match="no admin tokens"):
        tokens.create(store, name="root", role="admin")
    for role in ("", "Admin", "superuser", "viewer\x00"):
        with pytest.raises(UsageError, match="unknown token role"):
            tokens.create(store, name="x", role=role)
    assert tokens.list_tokens(store, include_revoked=True) == []


@pytest.mark.parametrize(
    "name",
    [
        "",
        "   ",
        "n" * 121,
        "before\x00after",
        "x\ud800y",
        "\x1b[31mred",
        "two\nlines",
        "\u202eevil",
    ],
    ids=["empty", "spaces", "len-121", "nul", "surrogate", "ansi", "newline", "rtl-override"],
)
def test_names_that_cannot_be_shown_safely_are_refused(store: Store, name: str) -> None:
    with pytest.raises(UsageError, match="name"):
        tokens.create(store, name=name, role="viewer")
    assert tokens.list_tokens(store, include_revoked=True) == []


def test_a_long_non_ascii_name_is_kept_whole(store: Store) -> None:
    name = "Ünïcødé 🚀 " + "é" * 109  # 120 characters, more bytes than that in UTF-8
    made = tokens.create(store, name=f"  {name}  ", role="reader")
    assert made.record.name == name
    assert [t.name for t in tokens.list_tokens(store)] == [name]
    principal = tokens.verify(store, made.token)
    assert principal is not None and principal.via == f"token:{name}"


def test_a_name_in_use_is_refused_and_free_again_once_revoked(store: Store) -> None:
    first = tokens.create(store, name="ci", role="viewer")
    with pytest.raises(UsageError, match="exists already"):
        tokens.create(store, name="ci", role="operator")
    assert tokens.revoke(store, "ci")
    second = tokens.create(store, name="ci", role="operator")
    assert tokens.verify(store, first.token) is None
    principal = tokens.verify(store, second.token)
    assert principal is not None and principal.role == "operator"


def test_creating_one_name_at_once_from_many_threads_makes_one_token(store: Store) -> None:
    start = threading.Barrier(6)
    made: list[str] = []
    refused: list[str] = []

    def attempt() -> None:
        start.wait()
        try:
            made.append(tokens.create(store, name="race", role="viewer").token)
        except UsageError as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=attempt) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(made) == 1 and len(refused) == 5
    assert all("exists already" in message for message in refused)
    assert [t.name for t in tokens.list_tokens(store)] == ["race"]


def test_an_expiry_must_be_in_the_future_and_representable(store: Store) -> None:
    with pytest.raises(UsageError, match="in the future"):
        tokens.create(store, name="ci", role="viewer", expires_in=timedelta(0))
    with pytest.raises(UsageError, match="in the future"):
        tokens.create(store, name="ci", role="viewer", expires_in=timedelta(days=-1))
    with pytest.raises(UsageError, match="9999"):
        tokens.create(store, name="ci", role="viewer", expires_in=timedelta(days=3_000_000))
    assert tokens.list_tokens(store, include_revoked=True) == []


def test_create_and_revoke_are_audited_without_the_secret(store: Store) -> None:
    ana = Actor("ana", role="admin", via="cli:ana@ops-1")
    with acting_as(ana):
        made = tokens.create(store, name="ci", role="reader", expires_in=timedelta(hours=12))
        assert tokens.revoke(store, "ci")
    created, revoked = audit_rows(store)
    for row in (created, revoked):
        assert (row.actor, row.via, row.target, row.outcome) == (
            "ana",
            "cli:ana@ops-1",
            "ci",
            "allowed",
        )
        assert row.detail["role"] == "reader"
        assert row.detail["expires_at"] == made.record.expires_at.isoformat()  # type: ignore[union-attr]
    assert (created.detail["operation"], revoked.detail["operation"]) == ("create", "revoke")
    assert row_of(store, "ci").created_by == "ana" and row_of(store, "ci").revoked_by == "ana"
    assert secret_of(made.token) not in everything_stored(store)


# -- verify ------------------------------------------------------------------------------


def test_a_good_token_gives_its_name_role_and_way_in(store: Store) -> None:
    for role in tokens.TOKEN_ROLES:
        made = tokens.create(store, name=f"{role} token", role=role)
        principal = tokens.verify(store, made.token)
        assert principal is not None
        assert (principal.name, principal.role, principal.via) == (
            f"{role} token",
            role,
            f"token:{role} token",
        )
        assert not principal.can("tokens:manage") and not principal.can("audit:read")
    viewer = tokens.verify(store, tokens.create(store, name="v2", role="viewer").token)
    assert viewer is not None and viewer.can("runs:read") and not viewer.can("payloads:read")


def test_surrounding_whitespace_is_ignored(store: Store) -> None:
    made = tokens.create(store, name="ci", role="viewer")
    assert tokens.verify(store, f"  {made.token}\t") is not None


def test_a_wrong_secret_or_an_unknown_id_is_refused(store: Store) -> None:
    made = tokens.create(store, name="ci", role="viewer")
    _, token_id, secret = made.token.split("_", 2)
    flipped = ("A" if secret[0] != "A" else "B") + secret[1:]
    other_id = ("a" if token_id[0] != "a" else "b") + token_id[1:]
    assert tokens.verify(store, f"ft_{token_id}_{flipped}") is None
    assert tokens.verify(store, f"ft_{other_id}_{secret}") is None
    assert tokens.verify(store, f"ft_{token_id}_{secret[:-1]}") is None
    assert tokens.verify(store, f"ft_{token_id}_{secret}x") is None
    assert tokens.verify(store, made.token.upper()) is None
    assert tokens.verify(store, made.token) is not None


def test_a_revoked_token_is_refused_from_the_next_call_on(store: Store) -> None:
    made = tokens.create(store, name="ci", role="operator")
    assert tokens.verify(store, made.token) is not None
    assert tokens.revoke(store, "ci")
    assert tokens.verify(store, made.token) is None


def test_expiry_is_decided_by_the_databases_clock(store: Store) -> None:
    made = tokens.create(store, name="ci", role="viewer", expires_in=timedelta(days=1))
    set_columns(store, "ci", expires_at=now_sql(store.dialect, -1.0))
    assert tokens.verify(store, made.token) is None
    assert [t.status for t in tokens.list_tokens(store)] == ["expired"]
    set_columns(store, "ci", expires_at=now_sql(store.dialect, 60.0))
    assert tokens.verify(store, made.token) is not None
    assert [t.status for t in tokens.list_tokens(store)] == ["active"]


def test_an_expired_token_can_be_revoked_to_free_its_name(store: Store) -> None:
    tokens.create(store, name="ci", role="viewer", expires_in=timedelta(minutes=5))
    set_columns(store, "ci", expires_at=now_sql(store.dialect, -1.0))
    assert tokens.revoke(store, "ci")
    assert tokens.create(store, name="ci", role="viewer").record.status == "active"


def test_a_stored_role_no_token_may_have_is_refused(store: Store) -> None:
    made = tokens.create(store, name="ci", role="operator")
    set_columns(store, "ci", role="admin")  # written by hand, not by create()
    assert tokens.verify(store, made.token) is None


GARBAGE = {
    "empty": "",
    "prefix": "ft_",
    "prefix-underscore": "ft__",
    "prefix-two-underscores": "ft___",
    "no-secret": "ft_abcdefghijkl_",
    "no-id": "ft__" + "s" * 43,
    "basic": "Basic dXNlcjpwYXNz",
    "bearer-inside": "Bearer ft_abcdefghijkl_" + "s" * 43,
    "len-10000": "ft_" + "a" * 10_000,
    "nul": "ft_abcdefghijkl_" + "s" * 21 + "\x00" + "s" * 21,
    "surrogate": "\udcff",
    "surrogate-in-token": "ft_abcdefghijkl_" + "\udcff" * 43,
    "non-ascii": "ft_abcdéfghijkl_" + "ü" * 43,
    "fullwidth-digits": "ft_abcdefghijk\uff11_" + "s" * 43,
    "newline": "ft_abcdefghijkl_" + "s" * 42 + "\n",
    "script": "<script>alert(1)</script>",
    "sql": "ft_abcdefghijkl_' OR '1'='1' --" + "x" * 13,
}


@pytest.mark.parametrize("presented", GARBAGE.values(), ids=GARBAGE.keys())
def test_garbage_is_refused_without_an_error(store: Store, presented: str) -> None:
    tokens.create(store, name="ci", role="operator")
    assert tokens.verify(store, presented) is None


def test_values_that_are_not_text_are_refused_without_an_error(store: Store) -> None:
    for value in (None, b"ft_abc", 42, ["ft_"], object()):
        assert tokens.verify(store, value) is None  # type: ignore[arg-type]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    presented=st.one_of(
        st.text(),
        st.from_regex(r"\Aft_[a-z0-9]{12}_[A-Za-z0-9_-]{43}\Z"),  # well formed: reaches the query
        st.text(alphabet=st.characters(codec="utf-8")).map(lambda s: "ft_" + s),
    )
)
def test_no_text_at_all_makes_verify_raise(store: Store, presented: str) -> None:
    assert tokens.verify(store, presented) is None


def test_a_database_that_cannot_be_read_is_an_error_not_a_refusal() -> None:
    # The token may be fine: the dashboard answers "try again" (503), not 401.
    away = Store("postgresql://postgres@127.0.0.1:1/nowhere", auto_migrate=False)
    try:
        assert tokens.verify(away, "ft__") is None  # garbage never reaches the database
        with pytest.raises(OperationalError):
            tokens.verify(away, "ft_abcdefghijkl_" + "s" * 43)
    finally:
        away.dispose()


def test_last_used_is_stored_and_written_at_most_once_a_minute(store: Store) -> None:
    made = tokens.create(store, name="ci", role="viewer")
    assert row_of(store, "ci").last_used_at is None
    assert tokens.verify(store, made.token) is not None
    first = row_of(store, "ci").last_used_at
    assert first is not None
    for _ in range(5):
        assert tokens.verify(store, made.token) is not None
    assert row_of(store, "ci").last_used_at == first  # within the minute: not written again
    set_columns(store, "ci", last_used_at=now_sql(store.dialect, -61.0))
    moved_back = row_of(store, "ci").last_used_at
    assert tokens.verify(store, made.token) is not None
    assert row_of(store, "ci").last_used_at > moved_back
    assert tokens.list_tokens(store)[0].last_used_at == row_of(store, "ci").last_used_at


def read_only_store(database_url: str) -> Store:
    """A store on the same database whose every write is refused, as a replica's is."""
    replica = Store(database_url, auto_migrate=False)
    postgres = replica.dialect == "postgresql"

    def refuse_writes(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        if postgres:  # what a hot standby answers too: SQLSTATE 25006
            cursor.execute("SET default_transaction_read_only = on")
            dbapi_connection.commit()
        else:
            cursor.execute("PRAGMA query_only = ON")
        cursor.close()

    event.listen(replica.engine, "connect", refuse_writes)
    return replica


def test_a_read_only_database_verifies_tokens_without_storing_their_use(
    store: Store, database_url: str
) -> None:
    made = tokens.create(store, name="ci", role="reader")
    replica = read_only_store(database_url)
    try:
        with pytest.raises(DBAPIError):  # the stand-in refuses writes indeed
            with replica.begin_write() as conn:
                conn.execute(update(api_tokens).values(last_used_at=None))
        for _ in range(3):
            principal = tokens.verify(replica, made.token)
            assert principal is not None and principal.role == "reader"
    finally:
        replica.dispose()
    assert row_of(store, "ci").last_used_at is None  # the write was refused, not the token


# -- the command line --------------------------------------------------------------------


@pytest.fixture
def runner(store: Store) -> CliRunner:
    """A runner whose commands use the test database (which exists: see ``store``)."""
    return CliRunner(env={"FLOW_TRACKER_DATABASE_URL": store.url.render_as_string(False)})


def test_cli_creates_lists_and_revokes_a_token(runner: CliRunner, store: Store) -> None:
    made = runner.invoke(main, ["tokens", "create", "--name", "ci", "--role", "viewer"])
    assert made.exit_code == 0, made.output
    token = made.stdout.strip()  # stdout holds the token alone: TOKEN=$(...) keeps it
    assert token.startswith("ft_") and "\n" not in token
    assert "will not be shown again" in made.stderr
    assert "Authorization: Bearer" in made.stderr
    assert tokens.verify(store, token) is not None

    listed = runner.invoke(main, ["tokens", "list"])
    assert listed.exit_code == 0, listed.output
    assert "ci" in listed.output and "viewer" in listed.output and "never" in listed.output
    assert secret_of(token) not in listed.output
    as_json = runner.invoke(main, ["tokens", "list", "--json"])
    records = json.loads(as_json.stdout)
    assert [(r["name"], r["role"], r["status"]) for r in records] == [("ci", "viewer", "active")]
    assert {"created_at", "expires_at", "last_used_at", "revoked_at"} <= set(records[0])
    assert secret_of(token) not in as_json.output and "sha256" not in as_json.output

    revoked = runner.invoke(main, ["tokens", "revoke", "ci"])
    assert revoked.exit_code == 0, revoked.output
    assert "revoked token 'ci'" in revoked.output
    assert tokens.verify(store, token) is None
    assert json.loads(runner.invoke(main, ["tokens", "list", "--json"]).stdout) == []
    everything = json.loads(runner.invoke(main, ["tokens", "list", "--all", "--json"]).stdout)
    assert [r["status"] for r in everything] == ["revoked"]


def test_cli_revoking_no_such_token_fails_and_says_so(runner: CliRunner) -> None:
    result = runner.invoke(main, ["tokens", "revoke", "nobody"])
    assert result.exit_code == 1
    assert "no active token named 'nobody'" in result.output and "nothing revoked" in result.output


def test_cli_create_with_an_expiry_and_as_json(runner: CliRunner, store: Store) -> None:
    result = runner.invoke(
        main,
        ["tokens", "create", "--name", "grafana", "--role", "reader", "--expires", "2w", "--json"],
    )
    assert result.exit_code == 0, result.output
    made = json.loads(result.stdout)
    assert made["role"] == "reader" and made["expires_at"] is not None
    assert tokens.verify(store, made["token"]) is not None
    record = tokens.list_tokens(store)[0]
    assert record.expires_at is not None
    assert timedelta(days=13) < record.expires_at - record.created_at <= timedelta(days=14)


@pytest.mark.parametrize("expires", ["90", "0d", "-5d", "1y", "5 days", "d", "99999999d", "१d"])
def test_cli_refuses_a_duration_it_cannot_read(runner: CliRunner, expires: str) -> None:
    result = runner.invoke(
        main, ["tokens", "create", "--name", "ci", "--role", "viewer", "--expires", expires]
    )
    assert result.exit_code == 2
    assert "30m, 12h, 90d or 2w" in result.output
    assert "Traceback" not in result.output


def test_cli_refuses_admin_and_a_taken_name_clearly(runner: CliRunner) -> None:
    admin = runner.invoke(main, ["tokens", "create", "--name", "root", "--role", "admin"])
    assert admin.exit_code == 2 and "no admin tokens" in admin.output
    assert (
        runner.invoke(main, ["tokens", "create", "--name", "ci", "--role", "viewer"]).exit_code == 0
    )
    again = runner.invoke(main, ["tokens", "create", "--name", "ci", "--role", "viewer"])
    assert again.exit_code == 1 and "exists already" in again.output
    bad = runner.invoke(main, ["tokens", "create", "--name", "a\x1bb", "--role", "viewer"])
    assert bad.exit_code == 1 and "printable" in bad.output and "\x1b" not in bad.output


def test_cli_actions_are_audited_as_the_commands_user(runner: CliRunner, store: Store) -> None:
    assert (
        runner.invoke(main, ["tokens", "create", "--name", "ci", "--role", "viewer"]).exit_code == 0
    )
    assert runner.invoke(main, ["tokens", "revoke", "ci"]).exit_code == 0
    rows = audit_rows(store)
    assert [r.detail["operation"] for r in rows] == ["create", "revoke"]
    assert all(r.via.startswith("cli:") and r.target == "ci" for r in rows)
