"""The demo's workflow runs: one completed, one failed and waiting, one resolved by hand."""

from __future__ import annotations

import time
from typing import Any

import flow_tracker
from flow_tracker.workflows import WorkflowStatus

WAIT_S = 60.0


class GatewayTimeout(TimeoutError):
    """The demo payment gateway did not answer."""


def _order_workflow(gateway_down: set[int]) -> flow_tracker.Workflow:
    orders = flow_tracker.workflow("process_order")

    @orders.step()
    def validate(context: dict[str, Any]) -> dict[str, Any]:
        flow_tracker.log("cart checked", data={"cart_id": context["cart_id"]})
        return {"total": 19.5 * context["items"]}

    @orders.step(
        depends_on=["validate"], retries=1, backoff=0.05, jitter=0.0, retry_on=(GatewayTimeout,)
    )
    def charge(context: dict[str, Any], validate: dict[str, Any]) -> dict[str, Any]:
        with flow_tracker.flow("call_gateway") as call:
            time.sleep(0.01)
            if context["cart_id"] in gateway_down:
                raise GatewayTimeout("payment gateway did not answer in 10 s")
            call.log(f"charged {validate['total']:.2f} EUR")
        return {"paid": validate["total"], "reference": f"ch_{context['cart_id']}"}

    @orders.step(depends_on=["validate"])
    def reserve_stock(context: dict[str, Any], validate: dict[str, Any]) -> dict[str, Any]:
        time.sleep(0.005)
        return {"reserved": context["items"]}

    @orders.step(depends_on=["charge", "reserve_stock"])
    def confirm(context: dict[str, Any], charge: dict[str, Any], reserve_stock: Any) -> str:
        flow_tracker.log(f"order confirmed, payment {charge['reference']}")
        return "confirmed"

    return orders


def record_workflows() -> list[WorkflowStatus]:
    """Run the demo order workflow three times on the in-process pool; return the runs."""
    down = {8, 9}
    orders = _order_workflow(down)
    done = orders.run(context={"cart_id": 7, "items": 2}).wait(WAIT_S)
    waiting = orders.run(context={"cart_id": 8, "items": 1}).wait(WAIT_S)
    resolving = orders.run(context={"cart_id": 9, "items": 3})
    resolving.wait(WAIT_S)
    flow_tracker.resolve_step(
        resolving.id,
        "charge",
        result={"paid": 58.5, "reference": "phone-0412"},
        reason="paid by phone",
        by="demo",
    )
    # Its confirm step runs now, on the pool: what the demo prints includes it.
    return [done, waiting, resolving.wait(WAIT_S)]
