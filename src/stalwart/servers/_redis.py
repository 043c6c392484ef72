"""An embedded ``redis-server``."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from stalwart.servers._binaries import find_redis_server
from stalwart.servers._process import LOOPBACK, _ServerProcess

if TYPE_CHECKING:
    from collections.abc import Sequence

    from stalwart.servers._tls import ServerTLS


def _read_reply(sock: socket.socket) -> bytes:
    """Read one RESP reply: a status/error line, or a bulk string's payload."""
    buf = b""
    while b"\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    line, _, rest = buf.partition(b"\r\n")
    if not line.startswith(b"$"):
        return line
    size = int(line[1:])
    while len(rest) < size + 2:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed")
        rest += chunk
    return rest[:size]


class RedisServer(_ServerProcess):
    """A ``redis-server`` on a loopback port, RDB snapshots off, AOF optional.

    ``data_dir`` defaults to a temp dir that is deleted on :meth:`stop` (kept across
    :meth:`restart`, so an AOF survives a :meth:`kill`).

    ``tls`` makes the port TLS-only (``--port 0 --tls-port``; mutual TLS with
    ``verify_clients``); the health check then speaks TLS too.

    ``extra_args`` go on the command line after Stalwart's own (``--replicaof host port``,
    ``--cluster-enabled yes``, ...): a later option overrides an earlier one in Redis.
    """

    _kind = "redis-server"

    def __init__(
        self,
        *,
        port: int | None = None,
        data_dir: str | Path | None = None,
        appendonly: bool = False,
        appendfsync: str = "everysec",
        binary: str | None = None,
        tls: ServerTLS | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        if appendfsync not in ("always", "everysec", "no"):
            raise ValueError(f"appendfsync must be always, everysec or no, not {appendfsync!r}")
        super().__init__(port=port, binary=binary or find_redis_server())
        self._owns_data = data_dir is None
        self.data_dir = Path(data_dir) if data_dir is not None else self._default_data()
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.tls = tls
        self.extra_args = list(extra_args)
        """Options added after the defaults (see the class docstring)."""

    def _default_data(self) -> Path:
        return self._own_tmp_dir() / "data"

    @property
    def url(self) -> str:
        """Client URL, ``redis://127.0.0.1:<port>/0`` (``rediss://`` when serving TLS)."""
        return f"{'rediss' if self.tls else 'redis'}://{LOOPBACK}:{self.port}/0"

    def _prepare(self) -> None:
        if self._owns_data and not self.data_dir.parent.exists():
            self.data_dir = self._default_data()
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def _tls_args(self) -> list[str]:
        t = self.tls
        if t is None:
            return ["--port", str(self.port)]
        return [
            "--port", "0",
            "--tls-port", str(self.port),
            "--tls-cert-file", t.cert_file,
            "--tls-key-file", t.key_file,
            *(["--tls-ca-cert-file", t.ca_file] if t.ca_file else []),
            "--tls-auth-clients", "yes" if t.verify_clients else "no",
        ]  # fmt: skip

    def _command(self) -> list[str]:
        return [
            self.binary,
            *self._tls_args(),
            "--bind", LOOPBACK,
            "--dir", str(self.data_dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--daemonize", "no",
            "--logfile", str(self.log_file),
            *self.extra_args,
        ]  # fmt: skip

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((LOOPBACK, self.port), timeout=1.0)
        if self.tls is None:
            return sock
        try:
            return self.tls.client_context().wrap_socket(sock, server_hostname=LOOPBACK)
        except BaseException:
            sock.close()
            raise

    def _probe(self) -> bool:
        proc = self._proc
        try:
            with self._connect() as sock:
                sock.sendall(b"PING\r\n")
                # -LOADING while the AOF is replayed: not ready yet, keep polling.
                if _read_reply(sock) != b"+PONG":
                    return False
                # Make sure the answer came from our process, not one that owns the port.
                sock.sendall(b"INFO server\r\n")
                info = _read_reply(sock)
        except (OSError, ValueError):  # ssl.SSLError is an OSError
            return False
        match = re.search(rb"^process_id:(\d+)", info, re.MULTILINE)
        return match is not None and proc is not None and int(match[1]) == proc.pid
