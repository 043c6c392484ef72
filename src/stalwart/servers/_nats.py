"""An embedded ``nats-server`` with JetStream."""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stalwart.servers._binaries import find_nats_server
from stalwart.servers._errors import RoutePortTaken
from stalwart.servers._process import LOOPBACK, _ServerProcess, free_port

if TYPE_CHECKING:
    from stalwart.servers._tls import ServerTLS


@dataclass(frozen=True, slots=True)
class ClusterRoutes:
    """The ``cluster`` block of one node: its cluster name, route port and peers' routes."""

    name: str
    port: int
    routes: tuple[str, ...]

    def block(self) -> str:
        """The block as nats-server configuration text."""
        routes = ", ".join(json.dumps(r) for r in self.routes)
        return (
            "cluster {\n"
            f"  name: {json.dumps(self.name)}\n"
            f"  listen: {json.dumps(f'{LOOPBACK}:{self.port}')}\n"
            f"  routes: [{routes}]\n"
            "}"
        )


class NatsServer(_ServerProcess):
    """A ``nats-server`` with JetStream on a loopback port.

    ``store_dir`` defaults to a temp dir that is deleted on :meth:`stop` (kept across
    :meth:`restart`). The health check uses a private monitoring port and waits until
    JetStream is ready.

    ``tls`` makes the client port TLS-only (mutual TLS with ``verify_clients``); ``config``
    is extra nats-server configuration text (an ``authorization`` block with nkeys, an
    ``operator`` with a resolver), written to a file in the server's temp dir (:attr:`config_file`).

    ``cluster`` makes it one node of a JetStream cluster (see :class:`NatsCluster`, which
    builds these): its route port and the other nodes' routes. The server name is then
    fixed by the caller, since JetStream's peers know each other by name across restarts.
    """

    _kind = "nats-server"

    def __init__(
        self,
        *,
        port: int | None = None,
        store_dir: str | Path | None = None,
        binary: str | None = None,
        tls: ServerTLS | None = None,
        config: str = "",
        cluster: ClusterRoutes | None = None,
        server_name: str | None = None,
    ) -> None:
        super().__init__(port=port, binary=binary or find_nats_server())
        self.tls = tls
        self.config = config
        self.cluster = cluster
        self._owns_store = store_dir is None
        self.store_dir = Path(store_dir) if store_dir is not None else self._default_store()
        self.monitor_port = free_port()
        # A unique name lets the health check tell our server from one that grabbed the port.
        self.server_name = server_name or f"stalwart-{secrets.token_hex(6)}"
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _default_store(self) -> Path:
        return self._own_tmp_dir() / "store"

    @property
    def url(self) -> str:
        """Client URL, ``nats://127.0.0.1:<port>`` (``tls://`` when serving TLS)."""
        return f"{'tls' if self.tls else 'nats'}://{LOOPBACK}:{self.port}"

    @property
    def config_file(self) -> Path:
        """Where the ``tls`` block and ``config`` text are written for ``-c``."""
        return self._own_tmp_dir() / "nats-server.conf"

    @property
    def _needs_config_file(self) -> bool:
        return self.tls is not None or bool(self.config) or self.cluster is not None

    def _config_text(self) -> str:
        lines = [self.config]
        if self.cluster is not None:
            lines.append(self.cluster.block())
        if self.tls is not None:
            t = self.tls
            block = [f"cert_file: {json.dumps(t.cert_file)}", f"key_file: {json.dumps(t.key_file)}"]
            if t.ca_file:
                block.append(f"ca_file: {json.dumps(t.ca_file)}")
            if t.verify_clients:
                block.append("verify: true")
            lines.append("tls {\n  " + "\n  ".join(block) + "\n}")
        return "\n".join(lines) + "\n"

    def _prepare(self) -> None:
        if self._owns_store and not self.store_dir.parent.exists():
            # stop() removed our temp dir; a fresh start gets a fresh one.
            self.store_dir = self._default_store()
        self.store_dir.mkdir(parents=True, exist_ok=True)
        if self._needs_config_file:
            self.config_file.write_text(self._config_text())

    def _repick_ports(self) -> None:
        self.monitor_port = free_port()

    def _after_bind_failure(self, attempt: int) -> None:
        cluster = self.cluster
        # Go's listen error names the address: "listen tcp 127.0.0.1:<port>: bind: ...".
        if cluster is not None and f"{LOOPBACK}:{cluster.port}: bind" in self._new_log_text():
            raise RoutePortTaken(
                f"nats-server could not bind its route port {cluster.port} "
                f"({self._describe()})\n{self._log_tail()}"
            )
        super()._after_bind_failure(attempt)

    def _command(self) -> list[str]:
        # The config file first: the flags below win over whatever it says.
        conf = ["-c", str(self.config_file)] if self._needs_config_file else []
        return [
            self.binary,
            *conf,
            "-a", LOOPBACK,
            "-p", str(self.port),
            "-m", str(self.monitor_port),
            "-n", self.server_name,
            "-js",
            "-sd", str(self.store_dir),
        ]  # fmt: skip

    def monitor(self, path: str) -> dict[str, Any] | None:
        """The JSON of monitoring endpoint ``path`` (``/jsz``, ``/varz``), None if no answer."""
        status, body = self._get(path)
        if status != 200:
            return None
        try:
            data = json.loads(body)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def _get(self, path: str) -> tuple[int, bytes]:
        url = f"http://{LOOPBACK}:{self.monitor_port}{path}"
        try:
            with self._opener.open(url, timeout=1.0) as resp:
                return int(resp.status), bytes(resp.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read()
        except (OSError, ValueError):
            return 0, b""

    def _probe(self) -> bool:
        status, _ = self._get("/healthz?js-enabled-only=true")
        if status != 200:
            return False
        status, body = self._get("/varz")
        if status != 200:
            return False
        try:
            varz = json.loads(body)
        except ValueError:
            return False
        return bool(varz.get("server_name") == self.server_name and varz.get("port") == self.port)
