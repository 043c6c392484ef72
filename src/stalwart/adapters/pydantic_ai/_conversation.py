"""A Stalwart conversation as PydanticAI's ``message_history``.

A run submitted with ``conversation="c-1"`` continues the conversation's earlier turns: the
worker reads the messages every earlier turn kept (``ctx.conversation.history()``, plain
data as ``ModelMessagesTypeAdapter`` dumps it in JSON mode, one item per message) and passes
them to ``agent.run`` as ``message_history``; once the run has its result, the run's
``new_messages()`` are appended as the next turn's items. Both calls are durable: a resumed
run reads the same prefix again and appends at most once, and the history is stored once in
Redis, never in the run's journal.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic_ai.messages import ModelMessagesTypeAdapter

from stalwart.errors import NonRetryableError

if TYPE_CHECKING:
    from pydantic_ai.messages import ModelMessage
    from pydantic_ai.run import AgentRunResult

    from stalwart.actors import RunContext
    from stalwart.adapters.pydantic_ai._request import AgentRequest


class HistoryConflict(NonRetryableError, ValueError):
    """A run was given both a conversation and a ``message_history``."""


async def conversation_history(ctx: RunContext, request: AgentRequest) -> list[ModelMessage] | None:
    """The messages the run continues from: its conversation's, else its ``message_history``."""
    conv = ctx.conversation
    if conv is None:
        return (
            ModelMessagesTypeAdapter.validate_python(request.message_history)
            if request.message_history
            else None
        )
    if request.message_history:
        raise HistoryConflict(
            f"run {ctx.run_id!r} belongs to conversation {conv.id!r}, which holds the earlier "
            "messages, and was also given message_history: pass one of them (the conversation "
            "continues from its own history)"
        )
    items = await conv.history()
    return ModelMessagesTypeAdapter.validate_python(items) if items else None


async def keep_turn(ctx: RunContext, result: AgentRunResult[Any]) -> None:
    """Append the run's new messages to its conversation (nothing without one)."""
    conv = ctx.conversation
    if conv is None:
        return
    new = result.new_messages()
    if new:
        await conv.append(ModelMessagesTypeAdapter.dump_python(new, mode="json"))
