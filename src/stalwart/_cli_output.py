"""How ``stalwart`` prints: ``-o table|json|jsonl``, aligned tables, human times, colour.

Colour only when stdout is a terminal and ``NO_COLOR`` is unset or empty
(https://no-color.org); otherwise no escape code at all, so piped output is plain text.
Column widths come from the content; nothing is truncated in JSON.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
import sys
import time
from typing import TYPE_CHECKING, Any, Literal, TextIO

import msgspec

from stalwart._json import dumps
from stalwart.errors import InvalidRequestError

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

Output = Literal["table", "json", "jsonl"]
OUTPUTS: tuple[str, ...] = ("table", "json", "jsonl")

_COLORS = {
    "completed": "32",  # green
    "failed": "31",  # red
    "cancelled": "33",  # yellow
    "running": "36",  # cyan
    "waiting": "34",  # blue
    "accepted": "2",  # dim
    "open": "31",
    "half_open": "33",
    "warn": "33",
    "dim": "2",
    "head": "1",  # bold
}


def use_color(stream: TextIO | None = None) -> bool:
    """Whether to colour what goes to ``stream`` (stdout): a terminal, and no ``NO_COLOR``."""
    stream = stream or sys.stdout
    if os.environ.get("NO_COLOR"):
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def paint(text: str, style: str, color: bool) -> str:
    """``text`` in the colour of ``style`` (a status name or a style above) when ``color``."""
    code = _COLORS.get(style)
    return f"\x1b[{code}m{text}\x1b[0m" if color and code and text else text


Cell = str | tuple[str, str]
"""A table cell: its text, or ``(text, style)`` to colour it."""


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Cell]],
    *,
    right: Iterable[int] = (),
    color: bool = False,
) -> str:
    """An aligned table: column widths from the content, two spaces between columns.

    ``right``: indexes of right-aligned (numeric) columns. Styles colour a cell after it
    is padded, so escape codes never break the alignment.
    """
    body = [[c if isinstance(c, tuple) else (c, "") for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in body:
        for i, (text, _) in enumerate(row):
            widths[i] = max(widths[i], len(text))
    at_right = set(right)

    def line(cells: Sequence[tuple[str, str]]) -> str:
        out = []
        for i, (text, style) in enumerate(cells):
            padded = text.rjust(widths[i]) if i in at_right else text.ljust(widths[i])
            out.append(paint(padded, style, color) if style else padded)
        return "  ".join(out).rstrip()

    return "\n".join([line([(h, "head") for h in headers]), *(line(r) for r in body)])


def ago(ts: float, now: float | None = None) -> str:
    """``ts`` (epoch seconds) relative to now: ``12s ago``, ``in 3m``; ``-`` for 0."""
    if not ts:
        return "-"
    delta = (time.time() if now is None else now) - ts
    text = span(abs(delta), whole=True)
    return f"{text} ago" if delta >= 0 else f"in {text}"


def span(seconds: float, *, whole: bool = False) -> str:
    """A duration for people: ``850ms``, ``4.2s``, ``3m04s``, ``2h05m``, ``3d04h``."""
    if not math.isfinite(seconds):
        return "-"
    if seconds < 1 and not whole:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.0f}s" if whole or seconds >= 10 else f"{seconds:.1f}s"
    s = int(seconds)
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def iso(ts: float) -> str:
    """``ts`` as ISO-8601 in UTC (``2026-12-03T14:48:05.123Z``); "" for 0."""
    if not ts:
        return ""
    moment = dt.datetime.fromtimestamp(ts, dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d|w)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(text: str, now: float | None = None) -> float:
    """``10m``, ``2h``, ``1d`` (that long ago) or ISO-8601 (no offset: local time) as epoch
    seconds; :class:`InvalidRequestError` for anything else."""
    text = text.strip()
    m = _RELATIVE.match(text)
    if m:
        return (time.time() if now is None else now) - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00") if text else "?")
    except ValueError:
        raise InvalidRequestError(
            f"expected a time like 10m, 2h, 1d or ISO-8601 (2026-12-03T14:00:00Z), got {text!r}"
        ) from None
    return moment.timestamp()


_OPAQUE = frozenset({"result", "input", "data", "arguments", "payload"})
"""Keys whose values are the user's data: never rewritten."""


def plain(obj: Any) -> Any:
    """``obj`` as plain JSON data, each non-zero ``*_at`` time also as ``*_at_iso``
    (Stalwart's own fields only: the user's data in ``result`` and the like is untouched)."""
    return _with_iso(msgspec.to_builtins(obj, str_keys=True, enc_hook=repr))


def _with_iso(data: Any) -> Any:
    if isinstance(data, list):
        return [_with_iso(x) for x in data]
    if not isinstance(data, dict):
        return data
    out: dict[str, Any] = {}
    for key, value in data.items():
        out[key] = value if key in _OPAQUE else _with_iso(value)
        if key.endswith("_at") and isinstance(value, int | float) and value > 0:
            out[key + "_iso"] = iso(float(value))
    return out


def emit(rows: Sequence[Any], output: Output, render: Any, *, whole: Any = None) -> None:
    """Print ``rows`` as ``output``: ``json`` one document (``whole`` when given, else the
    list), ``jsonl`` one object a line, ``table`` what ``render(rows)`` returns."""
    if output == "json":
        print(dumps(plain(whole if whole is not None else list(rows))))
    elif output == "jsonl":
        for row in rows:
            print(dumps(plain(row)))
    else:
        print(render(rows))
