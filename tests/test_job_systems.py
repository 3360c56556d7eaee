"""The queue registry: one record per queue; everything the core asks of a queue goes through it."""

from __future__ import annotations

import ast
import sys
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

import flow_tracker
from flow_tracker import Status, UsageError, job_systems
from flow_tracker.job_systems import JobSystem
from flow_tracker.store.workflows import Dispatch
from flow_tracker.tracker import outcome_of
from flow_tracker.workflows import definition, engine

SRC = Path(flow_tracker.__file__).resolve().parent


@pytest.fixture(autouse=True)
def _registry_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from the records installed so far and leaves them as they were."""
    monkeypatch.setattr(job_systems, "_systems", dict(job_systems._systems))
    monkeypatch.setattr(job_systems, "_queues_used", {})
    monkeypatch.setattr(job_systems, "_listeners", [])  # no delivery thread from a test


class _Postpone(Exception):
    """A queue's own "try again later" exception."""


def test_one_record_is_what_recovery_workflows_and_the_tracker_ask_of_a_queue() -> None:
    requeued: list[tuple[Mapping[str, Any], str]] = []
    sent: list[Dispatch] = []

    def probe(jobs: Any) -> set[str]:
        return {job_id for job_id, _queue, _payload in jobs}

    job_systems.register(
        JobSystem(
            name="fakeq",
            default_queue="fast",
            requeue=lambda payload, job_id: requeued.append((payload, job_id)),
            probe=probe,
            control_flow={_Postpone: Status.RETRYING},
            send_step=sent.append,
        )
    )
    requeuer = job_systems.requeuer_for("fakeq")
    assert requeuer is not None
    requeuer({"args": [1]}, "job-1")
    assert requeued == [({"args": [1]}, "job-1")]
    assert "fakeq" in job_systems.requeue_systems()
    assert job_systems.probes()["fakeq"]([("job-2", None, None)]) == {"job-2"}
    assert engine.sender_for("fakeq") == sent.append
    assert "fakeq" in engine.sending_systems()
    assert outcome_of(_Postpone("later"))[0] is Status.RETRYING
    assert outcome_of(ValueError("boom"))[0] is Status.FAILED


def test_a_queue_that_is_not_installed_here_has_no_record_and_nothing_to_send() -> None:
    job_systems.unregister("fakeq")
    assert job_systems.get("fakeq") is None
    assert job_systems.requeuer_for("fakeq") is None
    assert engine.sender_for("fakeq") is None
    assert "fakeq" not in engine.sending_systems()


def test_update_changes_one_field_and_keeps_the_rest() -> None:
    job_systems.register(JobSystem(name="fakeq", default_queue="fast"))
    job_systems.update("fakeq", send_step=print)
    record = job_systems.get("fakeq")
    assert record is not None
    assert (record.default_queue, record.send_step) == ("fast", print)


def test_every_queue_steps_use_is_declared_whether_used_before_or_after_install() -> None:
    declared: list[str] = []
    job_systems.queue_used("fakeq", "before")
    job_systems.register(JobSystem(name="fakeq", declare_queue=declared.append))
    job_systems.queue_used("fakeq", "after")
    job_systems.queue_used("fakeq", "after")
    assert declared == ["before", "after"]


def test_a_listener_hears_of_each_registration() -> None:
    heard: list[str] = []
    job_systems.on_register(lambda system: heard.append(system.name))
    job_systems.register(JobSystem(name="fakeq"))
    assert heard == ["fakeq"]


def test_a_record_needs_a_name() -> None:
    with pytest.raises(ValueError, match="needs a name"):
        job_systems.register(JobSystem(name=""))


@pytest.mark.parametrize(
    ("version", "refused"),
    [("5.2.9", True), ("5.3.0", False), ("6.0", False), ("5.3rc1", False), ("dev", False)],
)
def test_one_version_check_for_every_queue(version: str, refused: bool) -> None:
    if refused:
        with pytest.raises(ImportError, match=r"needs Celery >= 5\.3, found 5\.2\.9"):
            job_systems.check_version("Celery", version, (5, 3))
    else:
        job_systems.check_version("Celery", version, (5, 3))


def test_a_workflow_on_an_unknown_queue_is_refused_with_the_queues_known_here() -> None:
    with pytest.raises(UsageError, match=r"no queue 'sqs'.*known here: .*threads"):
        flow_tracker.workflow("registry_unknown", queue="sqs")
    with pytest.raises(UsageError, match="name of a queue module"):
        flow_tracker.workflow("registry_dotted", queue="os.path")
    # Named in full, a queue of a team's own needs no module here (its workers install it).
    named = flow_tracker.workflow("registry_named", queue="sqs", queue_name="jobs")
    assert (named.queue, named.queue_name) == ("sqs", "jobs")


def test_a_queue_not_installed_here_still_sends_to_its_own_default_queue(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A script declaring a Celery workflow without Celery: its module's source is read."""
    job_systems.unregister("celery")
    # Not imported to find it (a dashboard may not have the queue's library).
    monkeypatch.delitem(sys.modules, "flow_tracker.integrations.celery", raising=False)
    wf = flow_tracker.workflow("registry_celery_default", queue="celery")
    assert wf.queue_name == "celery"
    assert "flow_tracker.integrations.celery" not in sys.modules
    assert (
        flow_tracker.workflow("registry_named_queue", queue="rq", queue_name="q").queue_name == "q"
    )


def test_a_teams_own_queue_module_registers_and_is_used_like_the_built_in_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent: list[Dispatch] = []
    module = types.ModuleType("acme_queue")
    module.install = lambda: job_systems.register(  # type: ignore[attr-defined]
        JobSystem(name="acme", default_queue="acme-steps", send_step=sent.append)
    )
    monkeypatch.setitem(sys.modules, "acme_queue", module)
    module.install()
    wf = flow_tracker.workflow("registry_acme", queue="acme")
    assert (wf.queue, wf.queue_name) == ("acme", "acme-steps")
    assert engine.sender_for("acme") == sent.append


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_no_import_runs_from_the_core_or_the_workflows_up_into_the_queue_modules() -> None:
    below = [*SRC.glob("*.py"), *(SRC / "store").rglob("*.py"), *(SRC / "workflows").glob("*.py")]
    upward = {
        str(path.relative_to(SRC)): sorted(
            name for name in _imports(path) if name.startswith("flow_tracker.integrations")
        )
        for path in below
    }
    assert {path: names for path, names in upward.items() if names} == {}


def test_each_queue_module_registers_exactly_one_record() -> None:
    for name in ("celery", "rq", "dramatiq"):
        text = (SRC / "integrations" / f"{name}.py").read_text()
        assert text.count("job_systems.register(") == 1, name
        assert "DEFAULT_QUEUE = " in text, name
    assert definition.THREADS == "threads"


def _function_level_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom) and (inner.module or "").startswith(
                    "flow_tracker.workflows"
                ):
                    found.append(f"{path.name}:{inner.lineno} {inner.module}")
    return found


def test_workflows_are_in_layers_with_one_lazy_start() -> None:
    """Definition <- status <- engine <- threads, starting, manage: imported top-down only."""
    lazy = [
        found
        for path in sorted((SRC / "workflows").glob("*.py"))
        for found in _function_level_imports(path)
    ]
    assert [entry.split(" ")[1] for entry in lazy] == ["flow_tracker.workflows.starting"], lazy
    for name, forbidden in {
        "definition": {"engine", "manage", "threads"},
        "database": {"definition", "engine", "manage", "starting", "status", "threads"},
        "status": {"engine", "manage", "starting", "threads"},
        "engine": {"manage", "starting", "threads"},
        "timeouts": {"engine", "manage", "starting", "threads"},
    }.items():
        imported = {
            module.rsplit(".", 1)[-1]
            for module in _imports(SRC / "workflows" / f"{name}.py")
            if module.startswith("flow_tracker.workflows.")
        }
        assert not imported & forbidden, (name, imported & forbidden)


def test_an_rq_step_enqueued_under_the_old_path_still_finds_its_function() -> None:
    """Steps queued by an older version name ``workflows.queues.rq_step``: RQ must import it."""
    rq_utils = pytest.importorskip("rq.utils")
    from flow_tracker.integrations import rq as ft_rq
    from flow_tracker.workflows import queues

    assert rq_utils.import_attribute(queues.LEGACY_RQ_STEP_FUNCTION) is queues.rq_step
    assert rq_utils.import_attribute(ft_rq.STEP_FUNCTION) is ft_rq.workflow_step
