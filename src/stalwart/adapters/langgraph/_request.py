"""What crosses the process boundary: a run's request (input, ``Command``, config) and result.

A graph is invoked with an input or a ``Command`` and a config; a worker gets plain data. A
request without LangGraph options is the input itself, as plain data (what
``client.submit(name, input)`` sends from any process). A ``Command`` or a ``config`` turn
it into ``{"__langgraph__": 1, "input" | "command": ..., "config": ...}``. What cannot travel
(callbacks, a checkpointer, any live object) is refused at submit with an error saying where
to put it instead.

The result is the final state as plain data (messages as their ``model_dump``);
:func:`rebuild` turns dumped LangChain messages and ``__interrupt__`` entries back into
``BaseMessage`` and ``Interrupt`` objects, so the caller gets what ``graph.invoke`` returns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import msgspec
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    RemoveMessage,
    SystemMessage,
    ToolMessage,
)
from langgraph.types import Command, Interrupt

from stalwart.adapters.langgraph._tools import to_builtins

MARK = "__langgraph__"
_HEX = frozenset("0123456789abcdef")

# Config keys that are plain data and mean the same on any worker.
_PLAIN_CONFIG = frozenset(
    {"configurable", "recursion_limit", "tags", "metadata", "run_name", "max_concurrency"}
)
_LIVE_CONFIG = frozenset({"callbacks"})
# configurable keys the runner owns: a checkpoint position would restart the run from it
# on every resume, and a checkpointer cannot travel.
_OWNED = frozenset({"checkpoint_id", "checkpoint_ns", "__pregel_checkpointer"})

_MESSAGES: dict[str, type[BaseMessage]] = {
    "human": HumanMessage,
    "ai": AIMessage,
    "tool": ToolMessage,
    "system": SystemMessage,
    "chat": ChatMessage,
    "function": FunctionMessage,
    "remove": RemoveMessage,
}


@dataclass(frozen=True, slots=True)
class Request:
    """A decoded run request: the graph's input or a ``Command``, and the caller's config."""

    input: Any = None
    command: Command[Any] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    stream: bool = False
    """Stream the run's live items (tokens, custom writes): asked by ``runner.astream``."""

    @property
    def thread_id(self) -> str | None:
        """The caller's ``thread_id``, if the config names one."""
        tid = (self.config.get("configurable") or {}).get("thread_id")
        return None if tid is None else str(tid)


def _check_config(config: Mapping[str, Any]) -> dict[str, Any]:
    for key in config:
        if key in _LIVE_CONFIG:
            raise TypeError(
                f"config[{key!r}] cannot travel to the worker that runs the graph (it is "
                "part of the process that submits); give it to the runner instead: "
                f"DurableGraphRunner(..., config={{{key!r}: ...}})"
            )
        if key not in _PLAIN_CONFIG:
            raise TypeError(
                f"config[{key!r}] is not a per-run option of DurableGraphRunner (accepted: "
                f"{', '.join(sorted(_PLAIN_CONFIG))}); set it on the runner's config="
            )
    configurable = dict(config.get("configurable") or {})
    if owned := sorted(_OWNED & configurable.keys()):
        raise TypeError(
            f"config['configurable'][{owned[0]!r}] cannot be given per run: the runner "
            "resumes the thread from its newest checkpoint (fork a run with `stalwart fork` "
            "to go back in time)"
        )
    try:
        return cast("dict[str, Any]", msgspec.to_builtins(dict(config)))
    except TypeError as exc:
        raise TypeError(
            f"config cannot travel to the worker that runs the graph: {exc}; per-run config "
            "values must be plain data (str, numbers, lists, dicts)"
        ) from None


def _command(cmd: Command[Any]) -> dict[str, Any]:
    if cmd.graph is not None:
        raise TypeError(
            "Command(graph=...) targets a parent graph from inside a node; a run's input "
            "is a Command to the graph itself: leave graph unset"
        )
    goto: Any = cmd.goto
    if isinstance(goto, str):
        goto = [goto]
    elif not isinstance(goto, list | tuple):
        goto = [goto]  # a single Send
    if not all(isinstance(g, str) for g in goto):
        raise TypeError(
            "Command(goto=Send(...)) cannot travel to the worker as a run's input: give node "
            "names (goto='node' or a list of them), or send from a node of the graph"
        )
    return {
        "resume": to_builtins(cmd.resume, strict=True),
        "update": to_builtins(cmd.update, strict=True),
        "goto": goto,
    }


def with_thread(config: Mapping[str, Any] | None, conversation: str) -> Mapping[str, Any] | None:
    """``config`` with the conversation's thread (a conversation is a LangGraph thread)."""
    if not conversation:
        return config
    if not isinstance(conversation, str):
        raise TypeError(f"conversation must be a string, got {type(conversation).__name__}")
    out = dict(config or {})
    configurable = dict(out.get("configurable") or {})
    named = configurable.get("thread_id")
    if named is not None and str(named) != conversation:
        raise ValueError(
            f"conversation={conversation!r} is the LangGraph thread the run continues, but "
            f"config names thread_id {named!r}: give one of them (or the same id in both)"
        )
    configurable["thread_id"] = conversation
    out["configurable"] = configurable
    return out


def encode(input: Any, config: Mapping[str, Any] | None, *, stream: bool = False) -> Any:
    """The wire form of a run's input (or ``Command``), per-run ``config`` and whether the
    run streams its live items."""
    if config is None and not isinstance(input, Command) and not stream:
        return to_builtins(input, strict=True)
    out: dict[str, Any] = {MARK: 1, "config": _check_config(config or {})}
    if stream:
        out["stream"] = True
    if isinstance(input, Command):
        out["command"] = _command(input)
    else:
        out["input"] = to_builtins(input, strict=True)
    return out


def decode(data: Any) -> Request:
    """The request :func:`encode` made (or a bare input, from any client)."""
    if not (isinstance(data, Mapping) and data.get(MARK) == 1):
        return Request(input=data)
    config = dict(data.get("config") or {})
    stream = bool(data.get("stream"))
    cmd = data.get("command")
    if cmd is None:
        return Request(input=data.get("input"), config=config, stream=stream)
    goto = tuple(cmd.get("goto") or ())
    command: Command[Any] = Command(
        resume=cmd.get("resume"),
        update=cmd.get("update"),
        goto=goto[0] if len(goto) == 1 else goto,
    )
    return Request(command=command, config=config, stream=stream)


def is_resume_map(resume: Any) -> bool:
    """Whether a ``Command(resume=...)`` maps interrupt ids to answers (LangGraph's rule)."""
    return (
        isinstance(resume, dict)
        and bool(resume)
        and all(isinstance(k, str) and len(k) == 32 and _HEX.issuperset(k) for k in resume)
    )


def answers_for(resume: Any, waiting: Sequence[str]) -> dict[str, Any]:
    """``Command(resume=...)`` as answers to the interrupts a run waits on, as LangGraph reads
    it: a map of interrupt ids to values, or the value of the one interrupt pending."""
    if isinstance(resume, Mapping) and is_resume_map(dict(resume)):
        unknown = sorted(set(resume) - set(waiting))
        if unknown:
            raise ValueError(
                f"Command(resume=...) names interrupt {unknown[0]!r}, which the run on this "
                f"thread does not wait on (it waits on {', '.join(waiting)})"
            )
        return dict(resume)
    if len(waiting) > 1:
        raise ValueError(
            "When there are multiple pending interrupts, you must specify the interrupt id "
            f"when resuming: Command(resume={{id: value}}) with ids from {', '.join(waiting)}"
        )
    return {waiting[0]: resume}


def _message(value: Mapping[str, Any]) -> BaseMessage | None:
    cls = _MESSAGES.get(str(value.get("type")))
    if cls is None or "content" not in value or "additional_kwargs" not in value:
        return None
    try:
        return cls(**value)
    except (TypeError, ValueError):
        return None


def rebuild(value: Any) -> Any:
    """Result data with LangChain messages and ``__interrupt__`` entries as objects again."""
    if isinstance(value, Mapping):
        message = _message(value)
        if message is not None:
            return message
        out = {k: rebuild(v) for k, v in value.items() if k != "__interrupt__"}
        if "__interrupt__" in value:
            out["__interrupt__"] = [_interrupt(i) for i in value["__interrupt__"]]
        return out
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [rebuild(v) for v in value]
    return value


def _interrupt(data: Any) -> Any:
    if isinstance(data, Mapping) and "id" in data and "value" in data:
        fields = {k: v for k, v in data.items() if k in ("value", "id")}
        return Interrupt(**fields)
    return data
