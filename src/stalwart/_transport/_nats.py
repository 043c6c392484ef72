"""NATS: TLS, mutual TLS, nkey seeds and ``.creds`` files, each file checked before use."""

from __future__ import annotations

import base64
import binascii
import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import nkeys

from stalwart._transport._context import client_context, option, why
from stalwart.errors import ConfigurationError

if TYPE_CHECKING:
    from stalwart.config import Settings


@dataclass(frozen=True, slots=True)
class NatsSecurity:
    """TLS and credentials for NATS, from the ``nats_*`` settings (see docs/security.md).

    Any TLS option turns TLS on (as a ``tls://`` URL does): the client then refuses a server
    that does not require TLS rather than send credentials in plain text.
    """

    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    nkey_seed: str = ""
    creds: str = ""

    @classmethod
    def from_settings(cls, settings: Settings) -> NatsSecurity:
        """The NATS options of ``settings``."""
        return cls(
            tls_ca=settings.nats_tls_ca,
            tls_cert=settings.nats_tls_cert,
            tls_key=settings.nats_tls_key,
            nkey_seed=settings.nats_nkey_seed,
            creds=settings.nats_creds,
        )

    def describe(self) -> str:
        """What this client presents, for error messages (paths, never contents)."""
        parts = []
        if self.tls_cert:
            parts.append(f"client certificate {self.tls_cert!r}")
        if self.nkey_seed:
            parts.append(f"nkey seed {self.nkey_seed!r}")
        if self.creds:
            parts.append(f"creds {self.creds!r}")
        return ", ".join(parts)

    @property
    def tls(self) -> bool:
        """Whether TLS options are set (so TLS is required of the server)."""
        return bool(self.tls_ca or self.tls_cert or self.tls_key)

    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments for nats-py's ``connect``, every file checked first.

        Raises :class:`ConfigurationError` naming the option, the file and the cause.
        """
        if self.nkey_seed and self.creds:
            raise ConfigurationError(
                f"NATS: set {option('nats_nkey_seed')} or {option('nats_creds')}, not both "
                "(a .creds file carries its own nkey seed)"
            )
        options: dict[str, Any] = {}
        if self.tls:
            options["tls"] = client_context(
                "NATS",
                ca=("STALWART_NATS_TLS_CA", self.tls_ca) if self.tls_ca else None,
                cert=("STALWART_NATS_TLS_CERT", self.tls_cert) if self.tls_cert else None,
                key=("STALWART_NATS_TLS_KEY", self.tls_key) if self.tls_key else None,
            )
        if self.nkey_seed:
            seed = _read_text("nats_nkey_seed", self.nkey_seed).strip()
            _check_seed(seed, "nats_nkey_seed", f"({self.nkey_seed!r})")
            # A path, not the seed: nats-py reads the file when it signs a nonce, so the seed
            # does not sit in the client's options.
            options["nkeys_seed"] = self.nkey_seed
        if self.creds:
            _check_creds(self.creds)
            options["user_credentials"] = self.creds
        return options


def _read_text(name: str, path: str) -> str:
    try:
        with open(path, encoding="ascii") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"NATS: cannot read {option(name)}={path!r}: {why(exc)}") from None


def _check_seed(seed: str, name: str, where: str = "") -> str:
    """The public key of user seed ``seed``, or a ConfigurationError."""
    shown = f"{option(name)}" + (f" {where}" if where else "")
    try:
        kp = nkeys.from_seed(bytearray(seed.encode()))
    except Exception as exc:  # nkeys raises its own errors and binascii/ValueError alike
        raise ConfigurationError(
            f"NATS: {shown} is not an nkey seed ({type(exc).__name__}): expected one line "
            "starting with SU (as `nk -gen user` or nsc writes it)"
        ) from None
    public = str(kp.public_key.decode())
    kp.wipe()
    if not public.startswith("U"):
        raise ConfigurationError(
            f"NATS: {shown} is the seed of {_ROLES.get(public[:1], 'a non-user')} key, not of "
            "a user: connect with a user seed (SU...)"
        )
    return public


_ROLES = {"O": "an operator", "A": "an account", "N": "a server", "C": "a cluster"}


def _block(lines: list[str], marker: str) -> str | None:
    """The line after the one containing ``marker`` (how nats-py reads a .creds file)."""
    for i, line in enumerate(lines):
        if marker in line:
            return lines[i + 1].strip() if i + 1 < len(lines) else ""
    return None


def _check_creds(path: str) -> None:
    text = _read_text("nats_creds", path)
    lines = text.splitlines()
    name = "nats_creds"
    jwt = _block(lines, "BEGIN NATS USER JWT")
    seed = _block(lines, "BEGIN USER NKEY SEED")
    if not jwt or seed is None:
        missing = "user JWT" if not jwt else "user nkey seed"
        raise ConfigurationError(
            f"NATS: {option(name)}={path!r} is not a .creds file: it has no {missing} block "
            "(-----BEGIN NATS USER JWT----- / -----BEGIN USER NKEY SEED-----, as nsc writes it)"
        )
    claims = _jwt_claims(jwt, path)
    public = _check_seed(seed, name, f"({path!r}, its seed)")
    if claims.get("sub") != public:
        raise ConfigurationError(
            f"NATS: {option(name)}={path!r}: the nkey seed does not belong to the JWT's user "
            f"({claims.get('sub')!r})"
        )
    exp = claims.get("exp")
    if isinstance(exp, int | float) and exp and exp < time.time():
        raise ConfigurationError(
            f"NATS: {option(name)}={path!r}: the user JWT expired at "
            f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(exp))}"
        )


def _jwt_claims(jwt: str, path: str) -> dict[str, Any]:
    parts = jwt.split(".")
    try:
        if len(parts) != 3:
            raise ValueError("not three dot-separated parts")
        body = parts[1] + "=" * (-len(parts[1]) % 4)
        claims = json.loads(base64.urlsafe_b64decode(body))
        if not isinstance(claims, dict):
            raise ValueError("claims are not an object")
    except (ValueError, binascii.Error) as exc:
        raise ConfigurationError(
            f"NATS: {option('nats_creds')}={path!r}: the user JWT is garbled ({exc})"
        ) from None
    return claims
