"""Strands interrupts in a durable run: the answers come as durable signals.

Without Stalwart a caller answers an interrupted agent by invoking it again with
``interruptResponse`` blocks. In a durable run the runner does that for the caller: it
publishes ``agent.interrupted`` and waits for the signal ``interrupt:<id>`` of each
interrupt (the run passivates while nobody answers). A wait is journaled once answered, so
a run resumed after a crash gets the same answers from the journal and asks nobody again.

With an :class:`~stalwart.kit.ApprovalPolicy` (the runner's ``approvals=``), an interrupt
raised for a tool call (``tool_context.interrupt`` in the tool, ``event.interrupt`` in a
``BeforeToolCallEvent`` hook) is an approval bound to that call: the request names the tool
and the hash of its input, answers are checked (see :mod:`stalwart.approvals`), and the
interrupt's response is ``{"approved": bool, "message": str | None, "expired": bool}``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic_core import to_jsonable_python

from stalwart.kit import decide_approval, request_approval

if TYPE_CHECKING:
    from collections.abc import Sequence

    from strands.interrupt import Interrupt
    from strands.types.interrupt import InterruptResponseContent

    from stalwart.actors import RunContext
    from stalwart.approvals import ApprovalRequest
    from stalwart.kit import ApprovalPolicy

EVENT = "agent.interrupted"
"""The live event announcing interrupts: ``{"interrupts": [{"id", "name", "reason", "signal"}]}``."""


def signal_name(interrupt: Interrupt) -> str:
    """The signal that answers ``interrupt``: ``interrupt:<id>``."""
    return f"interrupt:{interrupt.id}"


async def wait_for_answers(
    ctx: RunContext,
    interrupts: Sequence[Interrupt],
    timeout: float | None,
    *,
    messages: Sequence[Any] = (),
    approvals: ApprovalPolicy | None = None,
) -> list[InterruptResponseContent]:
    """The responses to ``interrupts``, each the payload of its durable signal, in order.

    With ``approvals``, an interrupt of a tool call found in ``messages`` (the agent's
    conversation) is answered by a bound approval instead (see the module's docstring).
    """
    # Live only: a replay that reaches an answered (journaled) wait must not announce it
    # again; the first announcement stays in the run's event history.
    await ctx.emit(
        EVENT,
        {
            "interrupts": [
                {
                    "id": i.id,
                    "name": i.name,
                    "reason": to_jsonable_python(i.reason, fallback=repr),
                    "signal": signal_name(i),
                }
                for i in interrupts
            ]
        },
    )
    # Bound requests are all journaled and announced before the first wait, so the human
    # sees every call that waits.
    requests: dict[str, ApprovalRequest] = {}
    for interrupt in interrupts:
        call = tool_call_of(interrupt.id, messages) if approvals is not None else None
        if call is not None and approvals is not None:
            requests[interrupt.id] = await request_approval(
                ctx,
                call_id=interrupt.id,
                tool=call[0],
                arguments=call[1],
                policy=approvals,
                signal=signal_name(interrupt),
            )
    answers: list[InterruptResponseContent] = []
    for interrupt in interrupts:
        request = requests.get(interrupt.id)
        response: Any
        if request is not None and approvals is not None:
            decision = await decide_approval(ctx, request, approvals)
            response = {
                "approved": decision.approved,
                "message": decision.message,
                "expired": decision.expired,
            }
        else:
            response = await ctx.wait_for_signal(signal_name(interrupt), timeout=timeout)
        answers.append({"interruptResponse": {"interruptId": interrupt.id, "response": response}})
    return answers


_TOOL_INTERRUPTS = ("tool_call", "before_tool_call")


def tool_call_of(interrupt_id: str, messages: Sequence[Any]) -> tuple[str, Any] | None:
    """The (tool name, input) of the tool call an interrupt was raised for, or None.

    Strands names a tool call's interrupts ``v1:tool_call:<toolUseId>:<uuid>`` (from the
    tool) and ``v1:before_tool_call:<toolUseId>:<uuid>`` (from a ``BeforeToolCallEvent``
    hook); the call itself is the ``toolUse`` block with that id in the conversation.
    """
    parts = interrupt_id.split(":")
    if len(parts) < 4 or parts[0] != "v1" or parts[1] not in _TOOL_INTERRUPTS:
        return None
    use_id = ":".join(parts[2:-1])
    for message in reversed(messages):
        content = message.get("content") if isinstance(message, dict) else None
        for block in content or ():
            use = block.get("toolUse") if isinstance(block, dict) else None
            if isinstance(use, dict) and use.get("toolUseId") == use_id:
                return str(use.get("name", "")), use.get("input")
    return None
