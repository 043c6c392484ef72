"""Client TLS contexts built from files, with errors that name the setting and the file."""

from __future__ import annotations

import ssl

from stalwart.errors import ConfigurationError


def option(name: str) -> str:
    """How a user sets ``name``: its variable and its flag."""
    return f"STALWART_{name.upper()} (--{name.replace('_', '-')})"


def client_context(
    what: str,
    *,
    ca: tuple[str, str] | None,
    cert: tuple[str, str] | None,
    key: tuple[str, str] | None,
    verify: ssl.VerifyMode = ssl.CERT_REQUIRED,
    check_hostname: bool = True,
    ca_path: str = "",
    key_password: str | None = None,
    min_version: int | None = None,
    ciphers: str = "",
) -> ssl.SSLContext:
    """A client context; ``ca``, ``cert`` and ``key`` are (option, path) pairs for messages.

    Every file is loaded here, so a bad one is reported now, naming its option.
    """
    ctx = ssl.create_default_context()
    ctx.check_hostname = check_hostname and verify != ssl.CERT_NONE
    ctx.verify_mode = verify
    if key is not None and cert is None:
        raise ConfigurationError(
            f"{what}: {key[0]} is set but no client certificate is: mutual TLS needs both"
        )
    if cert is not None:
        try:
            ctx.load_cert_chain(cert[1], key[1] if key else None, password=key_password)
        except (OSError, ssl.SSLError, ValueError) as exc:
            named = f"{cert[1]!r} ({cert[0]})" + (f" / {key[1]!r} ({key[0]})" if key else "")
            raise ConfigurationError(
                f"{what}: cannot load the client certificate and key {named}: {why(exc)}"
            ) from None
    if ca is not None or ca_path:
        try:
            ctx.load_verify_locations(cafile=ca[1] if ca else None, capath=ca_path or None)
        except (OSError, ssl.SSLError, ValueError) as exc:
            named = f"{ca[1]!r} ({ca[0]})" if ca else f"{ca_path!r} (ssl_ca_path in the URL)"
            raise ConfigurationError(
                f"{what}: cannot load the CA certificates {named}: {why(exc)}"
            ) from None
    if min_version is not None:
        ctx.minimum_version = ssl.TLSVersion(min_version)
    if ciphers:
        try:
            ctx.set_ciphers(ciphers)
        except ssl.SSLError as exc:
            raise ConfigurationError(f"{what}: bad ssl_ciphers {ciphers!r}: {why(exc)}") from None
    return ctx


def why(exc: BaseException) -> str:
    """Why a file could not be used, in a few words."""
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, IsADirectoryError):
        return "it is a directory"
    if isinstance(exc, ssl.SSLError):
        # "[SSL] PEM lib (_ssl.c:3900)" says little; the reason and the library say more.
        reason = exc.reason or ""
        return f"not a usable PEM file ({reason or exc})"
    return str(exc) or type(exc).__name__
