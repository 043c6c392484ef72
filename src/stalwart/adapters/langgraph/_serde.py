"""The saver's default serializer: LangGraph's msgpack format, restricted to an allow-list.

LangGraph's ``JsonPlusSerializer`` stores an object as ``(module, name, args)`` and, by
default, rebuilds it on load by importing ``module`` and calling ``name`` — whatever a
checkpoint names: anyone who can write Redis can make a worker run ``os.system``. Its strict
mode (``allowed_msgpack_modules``) does not build a type off its list but silently hands
back the raw arguments instead, which would let a tampered checkpoint change a run's state
without anyone noticing.

:class:`SafeSerializer` keeps LangGraph's format and construction for the types it allows,
and checks every value first: one check pass reads the stored msgpack without building
anything and refuses the whole value (:class:`~stalwart.errors.DisallowedTypeError`) if any
object in it, at any depth, names a type off the list. Only then does LangGraph's own
(allow-listed) loader build it. Other serialization formats (``pickle``, ``json``) are
refused outright: the saver never writes them.
"""

from __future__ import annotations

import dataclasses
import enum
import typing
from typing import Any

import ormsgpack
from langgraph.checkpoint.serde._msgpack import SAFE_MSGPACK_METHODS, SAFE_MSGPACK_TYPES
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from pydantic import BaseModel

from stalwart.errors import DisallowedTypeError

if typing.TYPE_CHECKING:
    from collections.abc import Iterable

AllowedType = type | tuple[str, str]
"""An allowed type: the class itself, or ``(module, class name)`` as LangGraph stores it."""

DEFAULT_ALLOWED: frozenset[tuple[str, ...]] = frozenset(SAFE_MSGPACK_TYPES)
"""Allowed without asking: datetime/uuid/decimal/set/deque/ipaddress/pathlib/zoneinfo
values, LangChain messages and documents, and LangGraph's ``Send``, ``Command``,
``Interrupt``... (LangGraph's own list of safe types)."""

_PLAIN_FORMATS = frozenset({"null", "bytes", "bytearray"})
# LangGraph's msgpack extension codes that name a type: (module, name, ...) payloads.
_METHOD_CALL = 3
_NAMED = frozenset({0, 1, 2, _METHOD_CALL, 4, 5})
_DELTA = 7

ALLOW_HOW = (
    "if the type is yours and the data genuine, allow it: "
    "DurableGraphRunner(..., allowed_types=[YourType]) or StalwartSaver(allowed_types=[...]) "
    "(types in the graph's state schema are allowed already)"
)


def type_key(t: AllowedType) -> tuple[str, str]:
    """``(module, name)``: how LangGraph names a class in a checkpoint."""
    if isinstance(t, type):
        return (t.__module__, t.__name__)
    module, name = t
    return (str(module), str(name))


class _Refused(Exception):
    """Stops the check pass at the first type off the list."""


class SafeSerializer(JsonPlusSerializer):
    """LangGraph's serializer, rebuilding only :data:`DEFAULT_ALLOWED` and ``allowed_types``.

    A stored value naming any other type (at any depth) is refused with
    :class:`~stalwart.errors.DisallowedTypeError`: nothing is imported, nothing is called,
    and the value is not handed back half-decoded either. Writing is LangGraph's msgpack
    format, unchanged (``pickle`` is never used).
    """

    def __init__(self, allowed_types: Iterable[AllowedType] = ()) -> None:
        extra = {type_key(t) for t in allowed_types}
        super().__init__(pickle_fallback=False, allowed_msgpack_modules=tuple(extra) or None)
        self.allowed: frozenset[tuple[str, ...]] = DEFAULT_ALLOWED | extra

    def with_msgpack_allowlist(
        self, extra_allowlist: Iterable[tuple[str, ...] | type]
    ) -> JsonPlusSerializer:
        """A copy that also allows ``extra_allowlist`` (LangGraph's strict-mode compile)."""
        extra = list(extra_allowlist)
        clone = super().with_msgpack_allowlist(extra)
        if isinstance(clone, SafeSerializer) and clone is not self:
            clone.allowed = self.allowed | {
                type_key(t) if isinstance(t, type) else tuple(t) for t in extra
            }
        return clone

    def loads_typed(self, data: tuple[str, bytes]) -> Any:
        """The stored value, after checking every type it names against the allow-list."""
        kind, payload = data
        if kind == "msgpack":
            refused = self.refused_type(payload)
            if refused is not None:
                raise DisallowedTypeError(refused, ALLOW_HOW)
        elif kind not in _PLAIN_FORMATS:
            raise DisallowedTypeError(f"<{kind[:40]} serialized value>", ALLOW_HOW)
        return super().loads_typed(data)

    def refused_type(self, payload: bytes) -> str | None:
        """The first type off the allow-list that ``payload`` names, or None; builds nothing."""
        refused: list[str] = []

        def check(code: int, data: bytes) -> None:
            if code not in _NAMED and code != _DELTA:
                return None
            try:
                inner = ormsgpack.unpackb(data, ext_hook=check, option=ormsgpack.OPT_NON_STR_KEYS)
            except Exception:
                # Refused deeper down, or undecodable: LangGraph's loader would skip such an
                # object silently and build what follows it unchecked, so the value goes.
                if not refused:
                    refused.append(f"<undecodable msgpack extension {code}>")
                raise _Refused from None
            if code == _DELTA:
                return None
            if not self._allows(code, inner):
                refused.append(_shown(inner))
                raise _Refused
            return None

        try:
            ormsgpack.unpackb(payload, ext_hook=check, option=ormsgpack.OPT_NON_STR_KEYS)
        except (ValueError, TypeError):
            # ormsgpack reports a hook's exception as its own ValueError; anything else is
            # corrupt data, for LangGraph's loader to report.
            pass
        return refused[0] if refused else None

    def _allows(self, code: int, inner: Any) -> bool:
        if not (isinstance(inner, list | tuple) and len(inner) >= 3):
            return False
        module, name = inner[0], inner[1]
        if not (isinstance(module, str) and isinstance(name, str)):
            return False
        if code == _METHOD_CALL:
            return len(inner) >= 4 and (module, name, inner[3]) in SAFE_MSGPACK_METHODS
        return (module, name) in self.allowed


def _shown(inner: Any) -> str:
    if isinstance(inner, list | tuple) and len(inner) >= 2:
        parts = [str(p) for p in inner[:2]]
        if len(inner) >= 4 and isinstance(inner[3], str):
            parts.append(inner[3])
        return ".".join(parts)
    return repr(inner)[:200]


# -- the types a graph declares -------------------------------------------------------------


def declared_types(graph: Any) -> set[tuple[str, str]]:
    """``(module, name)`` of the pydantic models, dataclasses and enums a graph's state,
    input, output and node schemas and its channels mention, subgraphs included.

    These are the user types LangGraph checkpoints for the graph; a durable run allows them
    without asking. Types that only appear at run time (an ``interrupt()`` value, an
    ``@entrypoint``'s return value) must be passed as ``allowed_types``.
    """
    roots: list[Any] = []
    graphs = [graph]
    try:
        graphs += [sub for _, sub in graph.get_subgraphs(recurse=True)]
    except Exception:  # a graph-like object without subgraphs: its own schemas are enough
        pass
    for g in graphs:
        builder = getattr(g, "builder", None)
        for attr in ("state_schema", "input_schema", "output_schema", "context_schema"):
            roots.append(getattr(builder, attr, None))
        for node in (getattr(builder, "nodes", None) or {}).values():
            roots.append(getattr(node, "input_schema", None))
        for channel in (getattr(g, "channels", None) or {}).values():
            for attr in ("ValueType", "UpdateType"):
                try:
                    roots.append(getattr(channel, attr, None))
                except Exception:  # a channel type that cannot say: nothing to allow
                    continue
    found: set[tuple[str, str]] = set()
    seen: set[int] = set()
    for root in roots:
        _collect(root, found, seen)
    return found


def _collect(tp: Any, found: set[tuple[str, str]], seen: set[int]) -> None:
    if tp is None or id(tp) in seen:
        return
    seen.add(id(tp))
    for arg in typing.get_args(tp):  # unions, Annotated, list[...], dict[...], Literal
        _collect(arg, found, seen)
    if not isinstance(tp, type):
        return
    stored = (
        issubclass(tp, (BaseModel, enum.Enum)) or dataclasses.is_dataclass(tp)
    ) and tp.__module__ != "builtins"
    if stored:
        found.add((tp.__module__, tp.__name__))
    if stored or typing.is_typeddict(tp):
        try:
            hints = typing.get_type_hints(tp)
        except Exception:  # unresolvable forward references: what resolved is enough
            return
        for hint in hints.values():
            _collect(hint, found, seen)
