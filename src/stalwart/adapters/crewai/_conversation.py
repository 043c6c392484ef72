"""A Stalwart conversation as CrewAI models one: chat messages handed to the crew's tasks.

CrewAI's memory (short-term, long-term, entity) is a retrieval store the agents search, not
a conversation; the conversation CrewAI itself carries between kickoffs is its crew chat's:
``crewai chat`` kicks the crew off with ``inputs["crew_chat_messages"]``, a JSON list of
``{"role", "content"}`` messages, and every task appends them to its description as the
conversation history. A run with a conversation id does the same: its inputs get the
conversation's messages so far as ``crew_chat_messages``, and once the crew completed, the
turn's two messages are appended: the user's (the run's inputs: the value of a single input,
else ``key: value`` lines) and the assistant's (the crew's ``raw`` output). A lone agent's
run (``Agent.kickoff(messages)``) gets the history in front of its messages instead. The
messages are stored once, in Redis; a run that fails adds nothing.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from stalwart.errors import ConfigurationError

if TYPE_CHECKING:
    from stalwart.actors import RunContext

CHAT_INPUT = "crew_chat_messages"
"""The kickoff input CrewAI reads a crew chat's history from."""


def user_message(inputs: dict[str, Any] | None) -> dict[str, str]:
    """The user's message of a crew turn: its inputs, as a person would have typed them."""
    values = {k: v for k, v in (inputs or {}).items() if k != CHAT_INPUT}
    if len(values) == 1:
        content = str(next(iter(values.values())))
    else:
        content = "\n".join(f"{k}: {v}" for k, v in values.items())
    return {"role": "user", "content": content}


async def crew_inputs(
    ctx: RunContext, inputs: dict[str, Any] | None
) -> tuple[dict[str, Any] | None, list[dict[str, Any]] | None]:
    """The kickoff inputs with the conversation's history, and the history (None: no
    conversation)."""
    conv = ctx.conversation
    if conv is None:
        return inputs, None
    if inputs and CHAT_INPUT in inputs:
        raise ConfigurationError(
            f"a run with a conversation gets {CHAT_INPUT!r} from it; leave that input out"
        )
    history = [m for m in await conv.history() if isinstance(m, dict)]
    if not history:
        return inputs, history
    return {**(inputs or {}), CHAT_INPUT: json.dumps(history)}, history


async def agent_messages(ctx: RunContext, prompt: Any) -> tuple[Any, list[Any] | None]:
    """A lone agent's kickoff messages with the conversation's history in front."""
    conv = ctx.conversation
    if conv is None:
        return prompt, None
    history = list(await conv.history())
    asked = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    return [*history, *asked], asked


async def append_turn(ctx: RunContext, asked: list[Any], answer: str) -> None:
    """Add a completed turn's messages to the run's conversation."""
    conv = ctx.conversation
    if conv is not None:
        await conv.append([*asked, {"role": "assistant", "content": answer}])
