"""A Stalwart conversation as a Strands agent's ``messages``.

Strands models a conversation as the agent's message list (``agent.messages``), which a
session manager would persist message by message. Under a run with a conversation id
(``runner.run(prompt, conversation="c-1")``) the agent starts from the conversation's
history (every message the earlier turns added, in order) and, when the run completes, the
messages this run added are appended: the user's prompt, the assistant's replies, the tool
results. They are stored once, in Redis, as plain ``{"role", "content"}`` data (the same as
``DurableAgentResult.messages``).

The added messages are counted with a ``MessageAddedEvent`` hook rather than sliced off
``agent.messages``: a conversation manager may trim the front of the list during the run,
and the history must keep every message. A resumed run re-runs the loop from the journal,
so the hook sees the same messages in the same order. A run that fails adds nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from strands.hooks import MessageAddedEvent

from stalwart.errors import ConfigurationError
from stalwart.kit import ScopeVar

if TYPE_CHECKING:
    from strands import Agent

    from stalwart.actors import Conversation, RunContext

ADDED: ScopeVar[list[dict[str, Any]]] = ScopeVar("stalwart_strands_added")
"""The messages the top agent of the current run added (set only in a conversation run)."""

_TRACKED = "_stalwart_tracks_messages"


def _track(agent: Agent) -> None:
    """Hook ``agent`` (once per object) so the messages it adds land in :data:`ADDED`."""
    if getattr(agent, _TRACKED, False):
        return

    def added(event: MessageAddedEvent) -> None:
        sink = ADDED.get()
        if sink is not None and event.agent is agent:
            sink.append({"role": event.message["role"], "content": event.message["content"]})

    agent.add_hook(added, MessageAddedEvent)
    setattr(agent, _TRACKED, True)


async def load(ctx: RunContext, agent: Agent, messages: Any) -> Conversation | None:
    """Give ``agent`` the history of the run's conversation; None when it has none.

    ``messages`` is the run's ``messages=`` option: a run continues either a conversation or
    the messages it was given, not both.
    """
    conv = ctx.conversation
    if conv is None:
        return None
    if messages is not None:
        raise ConfigurationError(
            "a run with a conversation continues the conversation's history; give either "
            "conversation= or messages=, not both"
        )
    history = await conv.history()
    _track(agent)
    agent.messages = [{"role": m["role"], "content": m["content"]} for m in history]
    return conv


def refuse(ctx: RunContext, what: str) -> None:
    """A graph or swarm run cannot take a conversation (its history is per node)."""
    if ctx.conversation is not None:
        raise ConfigurationError(
            f"conversation= applies to a lone Agent; a {what} keeps no single message "
            "history (pass the earlier turn's output in the prompt)"
        )
