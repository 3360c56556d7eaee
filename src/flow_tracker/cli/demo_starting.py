"""The demo's started runs: two versions of a workflow, tags, a repeated key, a step skipped."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flow_tracker
from flow_tracker.workflows.starting import StartedRun

WAIT_S = 60.0


def _refund_versions() -> None:
    """payments/refund in version 1 (check, pay back) and 2 (check, pay back, notify)."""
    v1 = flow_tracker.workflow("refund", namespace="payments", version="1")

    @v1.step()
    def check(context: dict[str, Any]) -> dict[str, Any]:
        return {"amount": 12.5 * context["items"]}

    @v1.step(depends_on=["check"])
    def pay_back(context: dict[str, Any], check: dict[str, Any]) -> str:
        return f"refunded {check['amount']:.2f} EUR"

    v2 = flow_tracker.workflow(
        "refund", namespace="payments", version="2", description="check, pay back, notify"
    )
    v2.step(name="check")(check)

    @v2.step(name="pay_back", depends_on=["check"])
    def pay_back_v2(context: dict[str, Any], check: dict[str, Any]) -> str:
        return f"refunded {check['amount']:.2f} EUR to the card"

    @v2.step(depends_on=["pay_back"])
    def notify(context: dict[str, Any], pay_back: str) -> str:
        flow_tracker.log("refund e-mail sent", data={"order": context["order"]})
        return "e-mail sent"


def record_started_runs(echo: Callable[[str], None]) -> None:
    """Start runs as an admin tool would, and say what each start did."""
    _refund_versions()
    old = flow_tracker.start_workflow(
        "payments/refund", context={"order": 41, "items": 1}, version="1"
    )

    def ask() -> StartedRun:
        # What an admin tool sends, twice: the key makes the second a no-op.
        return flow_tracker.start_workflow(
            "payments/refund",
            context={"order": 42, "items": 2},
            idempotency_key="refund-42",
            tags={"customer": "c-42", "channel": "support"},
            initiator="alice",
            source="admin-api",
            reason="customer asked again",
        )

    new, repeated = ask(), ask()
    again = flow_tracker.start_workflow(
        "payments/refund",
        context={"order": 42, "items": 2},
        skip=["notify"],
        tags={"customer": "c-42"},
        initiator="alice",
        reason="run again without the e-mail",
    )
    for run in (old, new, again):
        run.wait(WAIT_S)
    versions = [d.version for d in flow_tracker.list_workflow_definitions() if d.name == "refund"]
    tagged = flow_tracker.list_workflows(tags={"customer": "c-42"})
    echo(
        f"Declared payments/refund in versions {' and '.join(sorted(versions))}; "
        f"a version 1 run ({old.id}) keeps version 1."
    )
    echo(
        f"Started payments/refund version {new.version} for customer c-42 with key refund-42 "
        f"({new.id}); the same request again returned that run "
        f"(created: {repeated.created}, same id: {repeated.id == new.id})."
    )
    echo(
        f"Ran it again with step notify skipped ({again.id}); {len(tagged)} runs carry the tag "
        "customer:c-42 (the run list's Tag filter)."
    )
