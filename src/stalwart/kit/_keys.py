"""Step keys and fingerprints: pure functions over plain data, the same for every adapter."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic_core import to_jsonable_python

from stalwart.actors import fingerprint


def canonical_fp(name: str, payload: Any) -> str:
    """Fingerprint a framework request already reduced to plain data."""
    return fingerprint(name, payload)


def text_digest(text: str) -> str:
    """A short stable digest, for fingerprinting large strings without storing them."""
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _opaque(obj: Any) -> str:
    # Objects JSON cannot hold take part by type only: a repr often carries a memory address.
    return f"<{type(obj).__qualname__}>"


def canonical_json(value: Any) -> str:
    """Deterministic JSON of ``value`` (sorted keys; objects JSON cannot hold by type name)."""
    plain = to_jsonable_python(value, fallback=_opaque)
    return json.dumps(plain, sort_keys=True, default=_opaque, ensure_ascii=False)


def tool_key(call_id: str | None, name: str, args: Any) -> str:
    """The one rule for a tool call's step key (before its scope's prefix).

    ``tool:<call id>`` when the model gave the call an id: it comes from the journaled model
    response, so it is the same on replay whatever order parallel calls run in. Without one
    (text tool calling), ``tool:<name>:<digest of the canonical arguments>``. A ``/`` in the
    id becomes ``_``: it separates scopes in step keys. Repeats of one key are told apart by
    the scope (:meth:`~stalwart.kit.DurableScope.next_named`: ``#2``, ``#3``...).
    """
    if call_id:
        return f"tool:{call_id.replace('/', '_')}"
    return f"tool:{name.replace('/', '_')}:{text_digest(canonical_json(args))}"
