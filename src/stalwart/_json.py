"""One representation of non-finite floats in every JSON Stalwart writes.

JSON has no NaN or infinity: msgspec writes them as ``null`` (the value is lost) and the
standard library as ``NaN`` (not JSON at all). Stalwart writes them as the strings
``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` (the convention of the protobuf JSON mapping)
in run events and in everything the ``stalwart`` command prints. The run record and the
journal are msgpack and keep the float itself, so ``RunHandle.result()`` returns ``nan``.
"""

from __future__ import annotations

import json
import math
from typing import Any

import msgspec

NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def _float(value: float) -> Any:
    return value if math.isfinite(value) else NON_FINITE[repr(value)]


def _walk(value: Any) -> Any:
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, dict):
        return {k: _walk(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_walk(v) for v in value]
    return value


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by its string form, at any depth.

    Never raises: data too deep to walk is returned unchanged.
    """
    try:
        return _walk(value)
    except RecursionError:
        return value


def dumps(value: Any) -> str:
    """``value`` (structs, dataclasses and builtins) as valid JSON text, on one line."""
    data = json_safe(msgspec.to_builtins(value, str_keys=True, enc_hook=repr))
    return json.dumps(data, default=str, allow_nan=False, ensure_ascii=False)
