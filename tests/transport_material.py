"""Key material for the transport-security tests, made on the spot.

Certificates with ``cryptography``: a CA, a server certificate for 127.0.0.1, a client
certificate, and a second CA with its own client certificate (trusted by nobody). NATS keys
with ``nkeys``: a user nkey seed, and an operator, account and user with hand-built JWTs (the
``ed25519-nkey`` JWTs nsc writes: header, claims, signature by the issuer's key), so a
nats-server in operator mode can be configured without nsc.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import os
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import nkeys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

if TYPE_CHECKING:
    from pathlib import Path

    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey

_KEY_USAGE = {
    "content_commitment": False,
    "key_encipherment": False,
    "data_encipherment": False,
    "key_agreement": False,
    "encipher_only": False,
    "decipher_only": False,
}


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _builder(
    subject: str, issuer: x509.Name, key: EllipticCurvePrivateKey
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
    )


def _write(
    directory: Path, name: str, key: EllipticCurvePrivateKey, cert: x509.Certificate
) -> None:
    (directory / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (directory / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


class _CA:
    def __init__(self, directory: Path, name: str) -> None:
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = (
            _builder(name, _name(name), self.key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True, **_KEY_USAGE
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        _write(directory, name, self.key, self.cert)

    def issue(self, name: str, *, server: bool) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            _builder(name, self.cert.subject, key)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if server:
            loopback = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
            builder = builder.add_extension(
                x509.SubjectAlternativeName([loopback, x509.DNSName("localhost")]),
                critical=False,
            )
        _write(self.directory, name, key, builder.sign(self.key, hashes.SHA256()))


def new_keypair(prefix: int) -> Any:
    """A fresh nkey pair of role ``prefix`` (``nkeys.PREFIX_BYTE_USER``, ...)."""
    return nkeys.from_seed(bytearray(nkeys.encode_seed(os.urandom(32), prefix)))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(
    issuer: Any, subject: str, kind: str, nats: dict[str, Any], *, exp: int | None = None
) -> str:
    """A NATS JWT of ``kind`` (operator, account, user) for ``subject``, signed by ``issuer``."""
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    claims = {
        "jti": uuid.uuid4().hex.upper(),
        "iat": int(time.time()),
        "iss": issuer.public_key.decode(),
        "name": kind,
        "sub": subject,
        "nats": {**nats, "type": kind, "version": 2},
        **({"exp": exp} if exp is not None else {}),
    }
    body = _b64(json.dumps(claims).encode())
    signature = _b64(issuer.sign(f"{header}.{body}".encode()))
    return f"{header}.{body}.{signature}"


def creds_text(jwt: str, seed: str) -> str:
    """A ``.creds`` file as nsc writes it."""
    return (
        f"-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
    )


@dataclass(frozen=True)
class Material:
    """Paths of everything made, in ``dir``."""

    dir: Path
    nkey_config: str
    """nats-server configuration: one user, by nkey."""
    operator_config: str
    """nats-server configuration: operator mode, the account (with JetStream) preloaded."""

    def path(self, name: str) -> str:
        return str(self.dir / name)


def make_material(directory: Path) -> Material:
    """Certificates, nkey seeds, JWTs and .creds files in ``directory``."""
    ca = _CA(directory, "ca")
    ca.issue("server", server=True)
    ca.issue("client", server=False)
    rogue = _CA(directory, "rogue-ca")
    rogue.issue("rogue-client", server=False)
    (directory / "garbled.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n")

    user = new_keypair(nkeys.PREFIX_BYTE_USER)
    other = new_keypair(nkeys.PREFIX_BYTE_USER)
    account = new_keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    (directory / "user.nk").write_text(user.seed.decode() + "\n")
    (directory / "other-user.nk").write_text(other.seed.decode() + "\n")
    (directory / "account.nk").write_text(account.seed.decode() + "\n")
    (directory / "garbled.nk").write_text("SUAGARBLEDSEED\n")
    nkey_config = f'authorization {{ users = [ {{ nkey: "{user.public_key.decode()}" }} ] }}\n'

    operator = new_keypair(nkeys.PREFIX_BYTE_OPERATOR)
    system = new_keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    op_pub, acc_pub, sys_pub = (
        operator.public_key.decode(),
        account.public_key.decode(),
        system.public_key.decode(),
    )
    limits = {
        "subs": -1,
        "data": -1,
        "payload": -1,
        "imports": -1,
        "exports": -1,
        "wildcards": True,
        "conn": -1,
        "leaf": -1,
    }
    jetstream = {"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}
    op_jwt = make_jwt(operator, op_pub, "operator", {"system_account": sys_pub})
    acc_jwt = make_jwt(operator, acc_pub, "account", {"limits": {**limits, **jetstream}})
    sys_jwt = make_jwt(operator, sys_pub, "account", {"limits": limits})
    user_claims = {"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1}
    user_jwt = make_jwt(account, user.public_key.decode(), "user", user_claims)
    expired_jwt = make_jwt(
        account, user.public_key.decode(), "user", user_claims, exp=int(time.time()) - 3600
    )
    seed = user.seed.decode()
    (directory / "user.creds").write_text(creds_text(user_jwt, seed))
    (directory / "expired.creds").write_text(creds_text(expired_jwt, seed))
    (directory / "mismatch.creds").write_text(creds_text(user_jwt, other.seed.decode()))
    (directory / "seed-only.creds").write_text(
        f"-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
    )
    (directory / "garbled-jwt.creds").write_text(creds_text("not.a-jwt", seed))
    operator_config = (
        f'operator: "{op_jwt}"\n'
        f'system_account: "{sys_pub}"\n'
        "resolver: MEMORY\n"
        f'resolver_preload: {{\n  {acc_pub}: "{acc_jwt}"\n  {sys_pub}: "{sys_jwt}"\n}}\n'
    )
    return Material(directory, nkey_config, operator_config)
