"""Payload encryption: the codec seam, the shipped AES-256-GCM codec, and sealed values.

A *payload* is what agent code and its callers put into a run: the input, step results,
error messages, signal payloads, the result, emitted event data. Everything else (run ids,
step keys and names, kinds, epochs, times, token counts, error type names) is metadata and
stays clear, so operators, the supervisor and the journal's own logic keep working without
any key.

One codec per process (:func:`set_payload_codec`, or the ``encryption_key`` /
``encryption_keys_file`` settings read by workers, clients and the CLI). With none, nothing
changes: values are stored byte for byte as before. With one, every payload is *sealed* on
its way to Redis or NATS:

- msgpack values (inputs, step results, signal payloads, results) become the msgpack
  extension type :data:`SEALED_EXT` holding the codec's envelope, so a journal entry stays
  valid msgpack and a sealed value is recognised wherever it is read;
- texts (error messages in the journal, the record and events; an event's result or
  emitted data) become ``stalwart-sealed:<base64 envelope>``.

An envelope starts with a small clear header (:func:`envelope_header`: version, key id), so
a reader without the key can still say which key it needs, and keys rotate without
re-encrypting anything: old payloads name their old key, which stays in the keyring.
Reading never needs the codec for a value that is not sealed, so runs written before
encryption was turned on stay readable.
"""

from __future__ import annotations

import base64
import binascii
import importlib
import json
import os
import re
import tomllib
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import msgspec

from stalwart._text import SEALED_TEXT_PREFIX
from stalwart.errors import ConfigurationError, PayloadKeyError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from stalwart.config import Settings

SEALED_EXT = 83
"""msgpack extension type code of a sealed value (``S``)."""
ENVELOPE_VERSION = 1
KEY_ID_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
DEFAULT_KEY_ID = "default"
"""Key id of a key given as ``STALWART_ENCRYPTION_KEY`` without an id."""

_NONCE = 12  # 96-bit GCM nonce, random per payload
_KEY_BYTES = 32  # AES-256
_EXT_HEADS = frozenset({0xC7, 0xC8, 0xC9})  # ext 8/16/32 (an envelope is never a fixext size)


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


# -- the process's codec ------------------------------------------------------------------------

_codec: PayloadCodec | None = None


def set_payload_codec(codec: PayloadCodec | None) -> None:
    """Use ``codec`` for every payload this process writes from now on (None: no encryption).

    Call it before the process connects (a worker's app module is a good place), for a
    codec of your own (a KMS); the settings ``encryption_key`` / ``encryption_keys_file``
    install an :class:`AesGcmCodec` the same way when a worker, client or CLI starts.
    """
    global _codec
    if codec is not None and not isinstance(codec, PayloadCodec):
        raise ConfigurationError(f"{codec!r} has no encode/decode methods: not a PayloadCodec")
    _codec = codec


def payload_codec() -> PayloadCodec | None:
    """The codec this process seals payloads with, or None."""
    return _codec


def codec_from_settings(settings: Settings) -> PayloadCodec | None:
    """The codec the settings ask for, or None when they name none: an
    :class:`AesGcmCodec` from a key or a keyring file, or the factory ``encryption_codec``
    names (``package.module:factory``) called with no arguments."""
    named = [
        n
        for n in ("encryption_key", "encryption_keys_file", "encryption_codec")
        if getattr(settings, n)
    ]
    if len(named) > 1:
        raise ConfigurationError(
            f"set one of STALWART_ENCRYPTION_KEY, STALWART_ENCRYPTION_KEYS_FILE and "
            f"STALWART_ENCRYPTION_CODEC, not both {' and '.join(named)} "
            "(a keyring file holds several keys)"
        )
    if settings.encryption_codec:
        return _codec_factory(settings.encryption_codec)
    if settings.encryption_keys_file:
        return AesGcmCodec.from_keyring_file(settings.encryption_keys_file)
    if settings.encryption_key:
        return AesGcmCodec.from_key(settings.encryption_key)
    return None


def _codec_factory(spec: str) -> PayloadCodec:
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigurationError(
            f"STALWART_ENCRYPTION_CODEC={spec!r}: expected package.module:factory ({exc})"
        ) from None
    codec = factory()
    if not isinstance(codec, PayloadCodec):
        raise ConfigurationError(
            f"STALWART_ENCRYPTION_CODEC={spec!r} returned {type(codec).__name__}, "
            "which has no encode/decode methods"
        )
    return codec


def install_codec(settings: Settings) -> None:
    """Install the codec the settings name; settings that name none leave the current one
    (set by :func:`set_payload_codec`) in place."""
    codec = codec_from_settings(settings)
    if codec is not None:
        set_payload_codec(codec)


# -- sealed msgpack values ----------------------------------------------------------------------


def sealed_blob(data: bytes) -> bytes | None:
    """The envelope inside a sealed value, or None when ``data`` is not one."""
    if len(data) < 3 or data[0] not in _EXT_HEADS:
        return None
    head = data[0]
    if head == 0xC7:
        size, code, start = data[1], data[2], 3
    elif head == 0xC8:
        size, code, start = int.from_bytes(data[1:3]), data[3], 4
    else:
        size, code, start = int.from_bytes(data[1:5]), data[5] if len(data) > 5 else -1, 6
    if code != SEALED_EXT or len(data) != start + size:
        return None
    return data[start:]


def is_sealed(data: bytes | msgspec.Raw | None) -> bool:
    """Whether ``data`` (a stored msgpack value) is sealed."""
    return data is not None and sealed_blob(bytes(data)) is not None


def decrypt_blob(blob: bytes) -> bytes:
    codec = _codec
    if codec is None:
        kid = envelope_key_id(blob)
        raise PayloadKeyError(
            f"payload is encrypted with key {kid!r} and this process has no encryption key "
            "(set STALWART_ENCRYPTION_KEY or STALWART_ENCRYPTION_KEYS_FILE)",
            kid,
        )
    return codec.decode(blob)


def seal_bytes(data: bytes) -> bytes:
    """``data`` sealed with this process's codec (unchanged when there is none, or when it
    is sealed already). Public for adapters that store payloads of their own (the
    LangGraph saver's blobs): seal before writing, :func:`open_bytes` after reading."""
    codec = _codec
    if codec is None or sealed_blob(data) is not None:
        return data
    return msgspec.msgpack.encode(msgspec.msgpack.Ext(SEALED_EXT, codec.encode(data)))


def open_bytes(data: bytes) -> bytes:
    """The plain bytes of a value :func:`seal_bytes` sealed; anything else unchanged.

    Raises :class:`~stalwart.errors.PayloadKeyError` (naming the key id) when this process
    cannot decrypt it.
    """
    blob = sealed_blob(data)
    return data if blob is None else decrypt_blob(blob)


def sealed_marker(key_id: str) -> str:
    """What readers without the key show in place of a payload."""
    return f"<encrypted: key {key_id}>" if key_id else "<encrypted>"


def describe_sealed(data: bytes | msgspec.Raw | None) -> str:
    """The marker of a sealed msgpack value (which key it needs)."""
    blob = sealed_blob(bytes(data or b""))
    return sealed_marker(envelope_key_id(blob) if blob is not None else "")


# -- sealed texts -------------------------------------------------------------------------------


def _text_blob(text: str) -> bytes | None:
    if not text.startswith(SEALED_TEXT_PREFIX):
        return None
    try:
        return base64.b64decode(text[len(SEALED_TEXT_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        return None


def is_sealed_text(text: Any) -> bool:
    """Whether ``text`` is a sealed text."""
    return isinstance(text, str) and text.startswith(SEALED_TEXT_PREFIX)


def _as_text(blob: bytes) -> str:
    return SEALED_TEXT_PREFIX + base64.b64encode(blob).decode()


def seal_text(text: str) -> str:
    """``text`` sealed as text (unchanged with no codec, or when it is sealed already)."""
    codec = _codec
    if codec is None or text.startswith(SEALED_TEXT_PREFIX):
        return text
    return _as_text(codec.encode(text.encode("utf-8", "surrogatepass")))


def open_text(text: str) -> str:
    """The plain text of a sealed text; the marker (``<encrypted: key k1>``) when this
    process cannot decrypt it. Never raises: for display and error messages."""
    if not text.startswith(SEALED_TEXT_PREFIX):
        return text
    blob = _text_blob(text)
    if blob is None:
        return sealed_marker("")
    try:
        return decrypt_blob(blob).decode("utf-8", "surrogatepass")
    except Exception:
        return sealed_marker(envelope_key_id(blob))


def seal_value_text(raw: bytes) -> str | None:
    """A msgpack value as a sealed text for an event: the envelope of an already sealed
    value as it is (no key needed), else ``raw`` sealed now; None with no codec and a
    plain value (the caller sends the value itself)."""
    blob = sealed_blob(raw)
    if blob is not None:
        return _as_text(blob)
    codec = _codec
    return None if codec is None else _as_text(codec.encode(raw))


def open_value_text(text: str) -> Any:
    """The value of a sealed text made by :func:`seal_value_text`; the marker when this
    process cannot decrypt it."""
    blob = _text_blob(text)
    if blob is None:
        return sealed_marker("")
    try:
        return msgspec.msgpack.decode(decrypt_blob(blob))
    except Exception:
        return sealed_marker(envelope_key_id(blob))


# -- events -------------------------------------------------------------------------------------


def open_event_data(data: Any) -> Any:
    """An event's ``data`` with its sealed parts opened (or replaced by the marker when this
    process has no key): emitted data sealed whole, a ``result``, an error's ``message``.
    Data with nothing sealed is returned as it is."""
    if isinstance(data, str):
        return open_value_text(data) if is_sealed_text(data) else data
    if not isinstance(data, dict):
        return data
    out = data
    result = data.get("result")
    if isinstance(result, str) and is_sealed_text(result):
        out = {**out, "result": open_value_text(result)}
    error = data.get("error")
    if isinstance(error, dict) and is_sealed_text(error.get("message")):
        out = {**out, "error": {**error, "message": open_text(error["message"])}}
    return out
