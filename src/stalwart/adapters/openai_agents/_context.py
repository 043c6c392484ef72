"""The SDK's run context in a durable run: one per run, and its state journaled with each step.

Tools, handoffs (``on_handoff``) and guardrails may change the run context, and dynamic
instructions read it. A resumed run does not run completed steps again, so their changes
to the context would be lost: the next model call would then be asked something else than in
the run that crashed. Each tool, handoff and guardrail step therefore journals the context's
state as it was when the step finished, and a replayed step puts that state back, in place
(the object the tools and instructions hold stays the same object).

A context's state can be journaled when it is plain data: a pydantic model, a dataclass or a
dict of JSON-compatible values. Any other context (or one holding a client, a connection...)
is used as it is and not journaled: its changes are not restored on resume.

Steps that run at the same time (parallel tool calls, a guardrail beside the first turn)
snapshot the whole context, each when it finishes; a counter numbers the snapshots so a
replay keeps the newest one whatever order the replayed steps come back in.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from pydantic import BaseModel, TypeAdapter
from pydantic_core import to_jsonable_python

from stalwart.errors import ConfigurationError

CONTEXT_KINDS = "a pydantic model, a dataclass or a dict of JSON-compatible values"
"""What a run context must be for its state to travel and be journaled (used in errors)."""


class NotPlainData(ValueError):
    """A context whose state cannot be turned into plain data."""


def is_plain_kind(value: Any) -> bool:
    """Whether ``value`` is of a kind whose state can be journaled (None included)."""
    return (
        value is None
        or isinstance(value, BaseModel | dict)
        or (dataclasses.is_dataclass(value) and not isinstance(value, type))
    )


def dump_context(value: Any) -> Any:
    """The state of a context as plain data; raises :class:`NotPlainData` when it has none."""
    if value is None:
        return None
    if not is_plain_kind(value):
        raise NotPlainData(
            f"a run context of type {type(value).__qualname__} is not plain data "
            f"(it must be {CONTEXT_KINDS})"
        )
    try:
        if isinstance(value, dict):
            return to_jsonable_python(value)
        return TypeAdapter(type(value)).dump_python(value, mode="json")
    except Exception as exc:  # a field JSON cannot hold (a client, a lock...)
        raise NotPlainData(
            f"the run context {type(value).__qualname__} holds a value that is not plain "
            f"data ({exc}); it must be {CONTEXT_KINDS}"
        ) from exc


def load_context(kind: type | None, data: Any) -> Any:
    """A context of type ``kind`` (a dict when None) rebuilt from :func:`dump_context` data."""
    if data is None or kind is None or kind is dict:
        return data
    return TypeAdapter(kind).validate_python(data)


def restore_in_place(target: Any, data: Any) -> None:
    """Give ``target`` the state ``data`` (from :func:`dump_context`), keeping the object."""
    if target is None or data is None:
        return
    if isinstance(target, dict):
        target.clear()
        target.update(data)
        return
    rebuilt = load_context(type(target), data)
    if isinstance(target, BaseModel):
        names: list[str] = list(type(target).model_fields)
        # object.__setattr__: no validate_assignment hooks, the values are validated already.
        for name in names:
            object.__setattr__(target, name, getattr(rebuilt, name))
        fields_set = getattr(rebuilt, "__pydantic_fields_set__", None)
        if fields_set is not None:
            object.__setattr__(target, "__pydantic_fields_set__", set(fields_set))
        return
    for f in dataclasses.fields(target):
        object.__setattr__(target, f.name, getattr(rebuilt, f.name))


class ContextJournal:
    """The context snapshots of one run: numbered, so the newest wins on replay."""

    def __init__(self) -> None:
        self.version = 0
        self._lock = threading.Lock()

    def snapshot(self, context: Any) -> dict[str, Any] | None:
        """The numbered state of ``context`` (None when it is None or not plain data)."""
        if context is None:
            return None
        try:
            data = dump_context(context)
        except NotPlainData:
            return None
        with self._lock:
            self.version += 1
            return {"v": self.version, "d": data}

    def restore(self, context: Any, snapshot: Any) -> None:
        """Put a journaled snapshot back into ``context`` unless a newer one is in already."""
        if not isinstance(snapshot, dict) or context is None:
            return
        version = snapshot.get("v")
        if not isinstance(version, int):
            return
        with self._lock:
            if version <= self.version:
                return
            self.version = version
            restore_in_place(context, snapshot.get("d"))


CONTEXTS: ContextVar[ContextJournal | None] = ContextVar("stalwart_openai_contexts", default=None)
"""The context journal of the current durable run (set by the runner around its loop)."""


def snapshot(context: Any) -> dict[str, Any] | None:
    """The current run's snapshot of ``context`` (None outside a durable run)."""
    journal = CONTEXTS.get()
    return journal.snapshot(context) if journal is not None else None


def restore(context: Any, snap: Any) -> None:
    """Restore a journaled snapshot into ``context`` in the current run (see ContextJournal)."""
    journal = CONTEXTS.get()
    if journal is not None:
        journal.restore(context, snap)


# -- one context per run ---------------------------------------------------------------------

ContextSource = Callable[[], Any]


def context_type_of(source: Any, explicit: type | None) -> type | None:
    """The type per-run contexts are rebuilt as: ``explicit``, a class given as the factory,
    or the type of a context object given as the template."""
    if explicit is not None:
        return explicit
    if isinstance(source, type):
        return source
    if source is not None and not callable(source):
        return type(source)
    return None


def fresh_context(source: Any) -> Any:
    """A context of its own for one run: the factory's result, or a deep copy of the template.

    ``source`` is what the runner was given as ``context``: None, a zero-argument callable
    (a class counts), or an object that every run gets a copy of.
    """
    if source is None:
        return None
    if callable(source):
        return source()
    try:
        return copy.deepcopy(source)
    except Exception as exc:
        raise ConfigurationError(
            f"the runner's context ({type(source).__qualname__}) cannot be copied for each run "
            f"({exc}); give a function that builds one instead (context=lambda: ...)"
        ) from exc
