"""An embedded ``nats-server`` with JetStream."""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request
from pathlib import Path

from stalwart.servers._binaries import find_nats_server
from stalwart.servers._process import LOOPBACK, _ServerProcess, free_port


class NatsServer(_ServerProcess):
    """A ``nats-server`` with JetStream on a loopback port.

    ``store_dir`` defaults to a temp dir that is deleted on :meth:`stop` (kept across
    :meth:`restart`). The health check uses a private monitoring port and waits until
    JetStream is ready.
    """

    _kind = "nats-server"

    def __init__(
        self,
        *,
        port: int | None = None,
        store_dir: str | Path | None = None,
        binary: str | None = None,
    ) -> None:
        super().__init__(port=port, binary=binary or find_nats_server())
        self._owns_store = store_dir is None
        self.store_dir = Path(store_dir) if store_dir is not None else self._default_store()
        self.monitor_port = free_port()
        # A unique name lets the health check tell our server from one that grabbed the port.
        self.server_name = f"stalwart-{secrets.token_hex(6)}"
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _default_store(self) -> Path:
        return self._own_tmp_dir() / "store"

    @property
    def url(self) -> str:
        """Client URL, ``nats://127.0.0.1:<port>``."""
        return f"nats://{LOOPBACK}:{self.port}"

    def _prepare(self) -> None:
        if self._owns_store and not self.store_dir.parent.exists():
            # stop() removed our temp dir; a fresh start gets a fresh one.
            self.store_dir = self._default_store()
        self.store_dir.mkdir(parents=True, exist_ok=True)

    def _repick_ports(self) -> None:
        self.monitor_port = free_port()

    def _command(self) -> list[str]:
        return [
            self.binary,
            "-a", LOOPBACK,
            "-p", str(self.port),
            "-m", str(self.monitor_port),
            "-n", self.server_name,
            "-js",
            "-sd", str(self.store_dir),
        ]  # fmt: skip

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
