"""Strands interrupts in a durable run: the answers come as durable signals.

Without Stalwart a caller answers an interrupted agent by invoking it again with
``interruptResponse`` blocks. In a durable run the runner does that for the caller: it
publishes ``agent.interrupted`` and waits for the signal ``interrupt:<id>`` of each
interrupt (the run passivates while nobody answers). A wait is journaled once answered, so
a run resumed after a crash gets the same answers from the journal and asks nobody again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic_core import to_jsonable_python

if TYPE_CHECKING:
    from collections.abc import Sequence

    from strands.interrupt import Interrupt
    from strands.types.interrupt import InterruptResponseContent

    from stalwart.actors import RunContext

EVENT = "agent.interrupted"
"""The live event announcing interrupts: ``{"interrupts": [{"id", "name", "reason", "signal"}]}``."""


def signal_name(interrupt: Interrupt) -> str:
    """The signal that answers ``interrupt``: ``interrupt:<id>``."""
    return f"interrupt:{interrupt.id}"


async def wait_for_answers(
    ctx: RunContext, interrupts: Sequence[Interrupt], timeout: float | None
) -> list[InterruptResponseContent]:
    """The responses to ``interrupts``, each the payload of its durable signal, in order."""
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
    answers: list[InterruptResponseContent] = []
    for interrupt in interrupts:
        response: Any = await ctx.wait_for_signal(signal_name(interrupt), timeout=timeout)
        answers.append({"interruptResponse": {"interruptId": interrupt.id, "response": response}})
    return answers
