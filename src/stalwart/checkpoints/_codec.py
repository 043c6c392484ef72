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
from typing import TYPE_CHECKING, Any

import msgspec

from stalwart._text import SEALED_TEXT_PREFIX
from stalwart.checkpoints._aesgcm import AesGcmCodec
from stalwart.checkpoints._envelope import PayloadCodec, envelope_key_id
from stalwart.errors import ConfigurationError, PayloadKeyError

if TYPE_CHECKING:
    from stalwart.config import Settings

SEALED_EXT = 83
"""msgpack extension type code of a sealed value (``S``)."""

SEALED_HEADS = frozenset({0xC7, 0xC8, 0xC9})
"""First bytes a sealed value can start with: msgpack ext 8/16/32 (an envelope is never a
fixext size). A cheap test before :func:`sealed_blob` on hot paths."""


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
    if len(data) < 3 or data[0] not in SEALED_HEADS:
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
