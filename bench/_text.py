"""Deterministic conversation content, shared by the Stalwart agents and the peers."""

from __future__ import annotations

import hashlib

MESSAGE_BYTES = 2048
"""Content a model call adds to the conversation in the journal-size run."""


def message(turn: int, size: int = MESSAGE_BYTES) -> str:
    """Deterministic, incompressible-looking text of ``size`` characters for turn ``turn``."""
    out: list[str] = []
    seed = str(turn).encode()
    while sum(map(len, out)) < size:
        seed = hashlib.blake2b(seed, digest_size=32).digest()
        out.append(seed.hex())
    return "".join(out)[:size]
