"""The shipped payload codec: AES-256-GCM with a keyring (from a key, or a JSON/TOML file)."""

from __future__ import annotations

import base64
import binascii
import json
import os
import tomllib
from typing import TYPE_CHECKING, Any

from stalwart.checkpoints._envelope import envelope_header, read_envelope_header
from stalwart.errors import ConfigurationError, PayloadKeyError

if TYPE_CHECKING:
    from collections.abc import Mapping

DEFAULT_KEY_ID = "default"
"""Key id of a key given as ``STALWART_ENCRYPTION_KEY`` without an id."""

_NONCE = 12  # 96-bit GCM nonce, random per payload
_KEY_BYTES = 32  # AES-256


class AesGcmCodec:
    """AES-256-GCM with a keyring: ``keys`` maps key id to a 32-byte key; new payloads use
    ``current``, old ones are read with whichever key their header names.

    Envelope: header (:func:`envelope_header`), a random 96-bit nonce, then ciphertext and
    the 16-byte tag. The header is the associated data, so a key id swapped in transit
    fails authentication like any other tampering. Random nonces keep the collision risk
    negligible below about 2**32 payloads per key: rotate keys long before that.
    """

    def __init__(self, keys: Mapping[str, bytes], current: str) -> None:
        try:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError:  # pragma: no cover - an optional dependency
            raise ConfigurationError(
                "payload encryption needs the `cryptography` package "
                "(pip install 'stalwart[encryption]')"
            ) from None
        if current not in keys:
            raise ConfigurationError(
                f"current encryption key {current!r} is not in the keyring "
                f"(keys: {', '.join(sorted(keys)) or 'none'})"
            )
        self._ciphers: dict[str, Any] = {}
        self._headers: dict[str, bytes] = {}
        for kid, key in keys.items():
            header = envelope_header(kid)
            if len(key) != _KEY_BYTES:
                raise ConfigurationError(
                    f"encryption key {kid!r} is {len(key)} bytes; AES-256 needs {_KEY_BYTES} "
                    "(make one with: python -c 'import os,base64;"
                    "print(base64.b64encode(os.urandom(32)).decode())')"
                )
            self._ciphers[kid] = AESGCM(key)
            self._headers[kid] = header
        self.current = current
        """Key id new payloads are encrypted with."""
        self._aead = self._ciphers[current]
        self._header = self._headers[current]

    @property
    def key_ids(self) -> list[str]:
        """Every key id this codec can decrypt (the keyring), sorted."""
        return sorted(self._ciphers)

    def __repr__(self) -> str:  # never the keys
        return f"AesGcmCodec(current={self.current!r}, key_ids={self.key_ids!r})"

    def encode(self, data: bytes) -> bytes:
        """Encrypt ``data`` with the current key and a fresh random nonce."""
        nonce = os.urandom(_NONCE)
        return self._header + nonce + self._aead.encrypt(nonce, data, self._header)  # type: ignore[no-any-return]

    def decode(self, data: bytes) -> bytes:
        """Decrypt an envelope with the key its header names."""
        from cryptography.exceptions import InvalidTag

        kid, start = read_envelope_header(data)
        aead = self._ciphers.get(kid)
        if aead is None:
            raise PayloadKeyError(
                f"payload is encrypted with key {kid!r}, which is not in this process's "
                f"keyring (keys: {', '.join(self.key_ids)})",
                kid,
            )
        nonce = data[start : start + _NONCE]
        try:
            return aead.decrypt(nonce, data[start + _NONCE :], data[:start])  # type: ignore[no-any-return]
        except InvalidTag:
            raise PayloadKeyError(
                f"payload encrypted with key {kid!r} failed authentication: the key under "
                "that id is not the one it was written with, or the bytes were altered",
                kid,
            ) from None

    # -- keyrings ---------------------------------------------------------------------------

    @classmethod
    def from_key(cls, value: str) -> AesGcmCodec:
        """One key from ``STALWART_ENCRYPTION_KEY``: ``<key id>:<base64 key>`` or just the
        base64 key (key id ``default``)."""
        kid, sep, b64 = value.strip().rpartition(":")
        kid = kid if sep else DEFAULT_KEY_ID
        return cls({kid: _key_bytes(kid, b64, "STALWART_ENCRYPTION_KEY")}, kid)

    @classmethod
    def from_keyring_file(cls, path: str) -> AesGcmCodec:
        """A keyring file, JSON or TOML (by its ``.toml`` suffix)::

            {"current": "k2", "keys": {"k1": "<base64 key>", "k2": "<base64 key>"}}

        Keep every key that old runs still use; ``current`` is the one new payloads get.
        """
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except OSError as exc:
            raise ConfigurationError(f"cannot read encryption keys file {path!r}: {exc}") from None
        try:
            doc = tomllib.loads(raw.decode()) if path.endswith(".toml") else json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigurationError(
                f"encryption keys file {path!r} is not valid "
                f"{'TOML' if path.endswith('.toml') else 'JSON'}: {exc}"
            ) from None
        keys = doc.get("keys") if isinstance(doc, dict) else None
        current = doc.get("current") if isinstance(doc, dict) else None
        if not isinstance(keys, dict) or not keys or not isinstance(current, str):
            raise ConfigurationError(
                f"encryption keys file {path!r} must hold "
                '{"current": "<key id>", "keys": {"<key id>": "<base64 key>", ...}}'
            )
        where = f"encryption keys file {path!r}"
        return cls({str(k): _key_bytes(str(k), v, where) for k, v in keys.items()}, current)


def _key_bytes(kid: str, b64: Any, where: str) -> bytes:
    if not isinstance(b64, str):
        raise ConfigurationError(f"{where}: key {kid!r} must be a base64 string")
    try:
        return base64.b64decode(b64.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigurationError(f"{where}: key {kid!r} is not valid base64") from None
