"""The two body encodings Stalwart accepts from other languages, chosen by a header.

Run requests and the control API (``stalwart.api``) read msgpack by default and JSON when
the message carries ``Content-Type: application/json``. One place decides, so the runs
subject and every API subject read bodies the same way and explain a refusal the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, TypeVar

import msgspec

from stalwart._json import json_safe
from stalwart._text import clip, msgpack_may_nest_deeper, nesting_depth_exceeds, safe_text

if TYPE_CHECKING:
    from collections.abc import Mapping

CONTENT_TYPE: Final = "Content-Type"
"""The header that names a body's encoding."""

JSON: Final = "application/json"
MSGPACK: Final = "application/msgpack"
ENCODINGS: Final = (MSGPACK, JSON)
"""The encodings a body may have; msgpack when the header is absent."""

_ALIASES = {"": MSGPACK, MSGPACK: MSGPACK, "application/x-msgpack": MSGPACK, JSON: JSON}

T = TypeVar("T")


class WireFormatError(ValueError):
    """A body that cannot be read: an unknown encoding, or bytes that are not the shape."""


def encoding_of(headers: Mapping[str, str] | None) -> str:
    """The encoding a message's headers name (:data:`MSGPACK` without a header).

    Parameters after ``;`` (``application/json; charset=utf-8``) are ignored; any other
    value raises :class:`WireFormatError` naming the accepted ones.
    """
    raw = (headers or {}).get(CONTENT_TYPE, "")
    value = str(raw).split(";", 1)[0].strip().lower()
    found = _ALIASES.get(value)
    if found is None:
        raise WireFormatError(
            f"unsupported {CONTENT_TYPE} {clip(str(raw), 80)!r}: use {JSON} or {MSGPACK} "
            "(no header means msgpack)"
        )
    return found


def decode(data: bytes, type_: type[T], encoding: str, *, what: str, max_nesting: int) -> T:
    """``data`` decoded as ``type_`` in ``encoding``, or :class:`WireFormatError` saying why.

    A JSON body sent without the header (the first thing a Node.js client tries) is told to
    set the header, instead of msgpack's "Expected `object`, got `int`". Values nested
    deeper than ``max_nesting`` are refused: a worker could not journal them.
    """
    try:
        if encoding == JSON:
            value = msgspec.json.decode(data, type=type_)
        else:
            value = msgspec.msgpack.decode(data, type=type_)
    except RecursionError:
        raise WireFormatError(
            f"malformed {what} ({len(data)} bytes): nested too deeply to decode"
        ) from None
    except Exception as exc:
        reason = clip(safe_text(exc), 500)
        if encoding == MSGPACK and data[:1] in (b"{", b"["):
            reason += f"; the body looks like JSON: set header {CONTENT_TYPE}: {JSON}"
        raise WireFormatError(
            f"malformed {what} ({len(data)} bytes, {encoding}): {reason}"
        ) from None
    deep = (
        len(data) > max_nesting if encoding == JSON else msgpack_may_nest_deeper(data, max_nesting)
    )
    if deep and _too_deep(value, max_nesting):
        raise WireFormatError(
            f"{what}: a value is nested deeper than max_nesting ({max_nesting} levels)"
        )
    return value


def _too_deep(value: Any, limit: int) -> bool:
    # The body's own struct is not a level of the values it carries: each field (an input,
    # a payload) is held to ``limit``, as the Python client holds them before sending.
    if isinstance(value, msgspec.Struct):
        return any(nesting_depth_exceeds(getattr(value, f), limit) for f in value.__struct_fields__)
    return nesting_depth_exceeds(value, limit)


def encode(value: Any, encoding: str) -> bytes:
    """``value`` in ``encoding``; JSON writes non-finite floats as strings (see ``_json``)."""
    if encoding == JSON:
        return msgspec.json.encode(value, enc_hook=_json_hook)
    return msgspec.msgpack.encode(value)


def _json_hook(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} cannot be written as JSON")


def encode_plain(value: Any, encoding: str) -> bytes:
    """A user value (a result, a payload) in ``encoding``: JSON-safe first when JSON."""
    return encode(json_safe(value) if encoding == JSON else value, encoding)
