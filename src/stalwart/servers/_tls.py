"""TLS files of an embedded server, for tests and local set-ups of transport security."""

from __future__ import annotations

import ssl
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ServerTLS:
    """PEM files an embedded ``nats-server`` or ``redis-server`` serves TLS with.

    ``verify_clients`` asks every client for a certificate signed by ``ca_file`` (mutual
    TLS). The health check connects as a client too: with ``verify_clients`` it presents
    ``client_cert_file`` / ``client_key_file``.
    """

    cert_file: str
    key_file: str
    ca_file: str = ""
    verify_clients: bool = False
    client_cert_file: str = ""
    client_key_file: str = ""

    def client_context(self) -> ssl.SSLContext:
        """A context that trusts ``ca_file`` and presents the client certificate if any."""
        ctx = ssl.create_default_context(cafile=self.ca_file or None)
        if self.client_cert_file:
            ctx.load_cert_chain(self.client_cert_file, self.client_key_file or None)
        return ctx
