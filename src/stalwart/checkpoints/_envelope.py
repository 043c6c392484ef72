"""The envelope every payload codec makes: a clear header naming the key, then the codec's
bytes; and :class:`PayloadCodec`, the protocol a codec (the shipped AES-GCM one, or a KMS of
your own) implements. See ``_codec`` for how payloads are sealed with it."""

from __future__ import annotations

import re
from typing import Protocol, runtime_checkable

from stalwart.errors import ConfigurationError, PayloadKeyError

ENVELOPE_VERSION = 1
KEY_ID_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
"""What a key id may be: it is written in clear into every payload's header."""


@runtime_checkable
class PayloadCodec(Protocol):
    """Turns a payload's bytes into an envelope and back (the hook for a KMS-backed codec).

    ``encode`` must return bytes that start with :func:`envelope_header` (the key id it
    used), so readers without the key can name it and :meth:`decode` can pick the key.
    ``decode`` raises :class:`~stalwart.errors.PayloadKeyError` (with the key id) when it
    cannot decrypt: unknown key id, wrong key material, tampered bytes.
    """

    def encode(self, data: bytes) -> bytes:
        """Encrypt ``data``; the result starts with the envelope header."""
        ...

    def decode(self, data: bytes) -> bytes:
        """Decrypt an envelope made by :meth:`encode` (with this key or an older one)."""
        ...


def envelope_header(key_id: str) -> bytes:
    """The clear header an envelope starts with: version byte, key id length, key id."""
    raw = key_id.encode()
    if not KEY_ID_PATTERN.fullmatch(key_id):
        raise ConfigurationError(
            f"encryption key id {key_id!r} must be 1-64 characters of A-Z a-z 0-9 _ . -"
        )
    return bytes((ENVELOPE_VERSION, len(raw))) + raw


def read_envelope_header(blob: bytes) -> tuple[str, int]:
    """``(key id, offset of the body)`` of an envelope; ``PayloadKeyError`` if it has none."""
    if len(blob) < 3 or blob[0] != ENVELOPE_VERSION or len(blob) < 2 + blob[1]:
        raise PayloadKeyError("encrypted payload has no readable envelope header")
    end = 2 + blob[1]
    try:
        return blob[2:end].decode(), end
    except UnicodeDecodeError:
        raise PayloadKeyError("encrypted payload has an unreadable key id") from None


def envelope_key_id(blob: bytes) -> str:
    """The key id an envelope names, or ``""`` when it has no readable header."""
    try:
        return read_envelope_header(blob)[0]
    except PayloadKeyError:
        return ""
