"""Step fingerprints: a stable hash of what a step was asked to do."""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec


def _opaque(obj: Any) -> Any:
    # Objects msgpack cannot encode (clients, sessions, callables) take part by type only:
    # their repr often carries a memory address, which would differ on every replay.
    return f"<{type(obj).__module__}.{type(obj).__qualname__}>"


_encoder = msgspec.msgpack.Encoder(enc_hook=_opaque, order="deterministic")


def fingerprint(name: str, *parts: Any) -> str:
    """Hash ``name`` and ``parts`` canonically (dict key order and memory addresses ignored)."""
    # One buffer, one hash call: it runs for every step, replayed or live. ``parts`` encodes
    # as the same msgpack array as ``list(parts)``, so fingerprints are unchanged.
    return hashlib.blake2b(
        b"%s\0%s" % (name.encode(), _encoder.encode(parts)), digest_size=12
    ).hexdigest()
