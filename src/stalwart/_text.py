"""Rendering and bounding of untrusted values: exceptions, long strings, deep nesting.

Everything here must never raise: it runs inside error handlers, where a second exception
would kill the task that was about to record the first one.
"""

from __future__ import annotations

from typing import Any

ERROR_TEXT_LIMIT = 1024 * 1024
"""Characters of an error message or cancel reason kept in the journal and the run record.

Generous (the full text of any sane message), but bounded, so a pathological ``str(exc)``
cannot make a journal write fail or hold megabytes per entry."""

SEALED_TEXT_PREFIX = "stalwart-sealed:"
"""Start of an encrypted payload carried as text (an event's result or error message, a
journaled error message): the prefix, then the codec's envelope in base64. Defined here, a
leaf, because the broker keeps such strings whole when it cuts an event down (a cut one
could never be decrypted); ``stalwart.checkpoints._codec`` makes and reads them."""

_UNRENDERABLE = "<unprintable exception>"
# type.__name__'s own descriptor: a metaclass can shadow ``__name__`` with a property that
# raises, but it cannot change what the base descriptor returns.
_TYPE_NAME = type.__dict__["__name__"]


def type_name(obj: object) -> str:
    """The name of ``obj``'s class, even when its metaclass makes ``__name__`` raise."""
    try:
        name = _TYPE_NAME.__get__(type(obj), type)
        return str.__str__(name) if isinstance(name, str) else "<unnamed>"
    except Exception:
        return "<unnamed>"


def _exact(text: object) -> str | None:
    # ``str()`` returns a str subclass as is; keep only the plain characters.
    return str.__str__(text) if isinstance(text, str) else None


def exception_text(exc: BaseException) -> str:
    """``str(exc)``, else ``repr(exc)``, else a placeholder naming the type: never raises."""
    for render in (str, repr):
        try:
            text = _exact(render(exc))
        except Exception:
            continue
        if text:
            return text
    return f"<{type_name(exc)}: {_UNRENDERABLE}>"


def safe_text(value: object) -> str:
    """``value`` as text (``str``, then ``repr``), never raising."""
    if type(value) is str:
        return value
    for render in (str, repr):
        try:
            text = _exact(render(value))
        except Exception:
            continue
        if text is not None:
            return text
    return f"<unprintable {type_name(value)}>"


def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, saying how much was cut."""
    if limit <= 0 or len(text) <= limit:
        return text
    marker = f"... [{len(text) - limit} more characters]"
    keep = max(limit - len(marker), 0)
    return text[:keep] + marker[: limit - keep]


def nesting_depth_exceeds(value: Any, limit: int) -> bool:
    """Whether ``value`` nests lists, tuples, sets or dicts more than ``limit`` levels deep.

    Level by level, not recursive, so it cannot itself run out of stack on the values it is
    meant to refuse; each level is gathered by C-level ``extend`` calls. For decoded values
    (exact built-in types).
    """
    level: list[Any] = [value]
    depth = 0
    while True:
        level = [item for item in level if type(item) in _CONTAINERS]
        if not level:
            return False
        depth += 1
        if depth > limit:
            return True
        children: list[Any] = []
        for item in level:
            children.extend(item.values() if type(item) is dict else item)
        level = children


_CONTAINERS = frozenset({dict, list, tuple, set, frozenset})
# msgpack bytes that can start a map or an array (fixmap, fixarray, map/array 16 and 32).
_MSGPACK_CONTAINER_BYTES = bytes([*range(0x80, 0xA0), 0xDC, 0xDD, 0xDE, 0xDF])
_NOT_CONTAINER_BYTES = bytes(b for b in range(256) if b not in _MSGPACK_CONTAINER_BYTES)


def msgpack_may_nest_deeper(data: bytes, limit: int) -> bool:
    """False when msgpack ``data`` certainly nests at most ``limit`` levels deep.

    Each level starts with one of a few header bytes, so fewer such bytes than ``limit``
    (counted in one C-level pass) rules deep nesting out without decoding: the common case.
    True means "decode and check" (:func:`nesting_depth_exceeds`).
    """
    return len(data) > limit and len(data.translate(None, _NOT_CONTAINER_BYTES)) > limit
