"""An agent whose tool call needs a bound approval, for ``tests/test_approvals.py``.

Served as ``tests.approval_apps:app`` by real worker processes. ``REFUND_AMOUNT`` and
``REFUND_TOOL`` in a worker's environment stand for a deploy that changed the call the code
makes (other arguments, another tool name) while a run was waiting or after it was approved.
"""

from __future__ import annotations

import os
from typing import Any

from stalwart import App, current_step
from stalwart.kit import ApprovalPolicy, await_approval
from tests.helpers import count_execution, wait_if_gated

app = App("approval-tests")


async def pay(to: str, amount: int) -> str:
    """The action that needs approval (counted; gated on ``step:pay`` when the test says)."""
    info = current_step()
    assert info is not None
    await wait_if_gated(info.run_id, info.key)
    await count_execution()
    return f"paid {amount} to {to}"


@app.agent("refund")
async def refund(ctx: Any, order: dict[str, Any]) -> dict[str, Any]:
    amount = int(os.environ.get("REFUND_AMOUNT", order["amount"]))
    tool = os.environ.get("REFUND_TOOL", "refund")
    policy = ApprovalPolicy(
        ttl=order.get("ttl"),
        on_expiry=order.get("on_expiry", "reject"),
        allow_unbound=bool(order.get("unbound", False)),
    )
    arguments = {"to": order["to"], "amount": amount}
    decision = await await_approval(
        ctx, call_id="c1", tool=tool, arguments=arguments, policy=policy
    )
    if not decision.approved:
        return {"approved": False, "message": decision.message, "expired": decision.expired}
    return {"approved": True, "paid": await ctx.step("pay", pay, order["to"], amount)}
