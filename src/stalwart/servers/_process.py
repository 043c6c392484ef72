"""The lifecycle every embedded server shares: spawn, wait for health, stop, kill, restart.

No orphans: on Linux each child gets ``PR_SET_PDEATHSIG = SIGKILL``, so it dies with us even
if we are SIGKILLed, and an :mod:`atexit` hook stops whatever is still running on a normal exit.
The kernel sends the death signal when the *thread* that forked the child exits, not the
process, so :meth:`~_ServerProcess.start` spawns in the calling thread and must be called from
a thread that lives as long as the server (the main thread or the event-loop thread).

These objects are not thread-safe: drive each one from a single thread.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

import anyio
import anyio.to_thread

from stalwart.servers._errors import ServerStartError

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

LOOPBACK = "127.0.0.1"
"""Every embedded server binds here only, so the machine's shared servers are never touched."""
_PR_SET_PDEATHSIG = 1
# A port picked by free_port() can be taken by someone else before the server binds it.
_BIND_ATTEMPTS = 5
_LOG_TAIL_LINES = 30


def time_left(deadline: float) -> float:
    """Seconds from now to ``deadline`` (a ``time.monotonic()`` value), at least 1: each
    stage of a multi-stage start gets a moment even when the earlier ones used the budget."""
    return max(deadline - time.monotonic(), 1.0)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    The OS picks it (bind to port 0), so it is outside the standard service ports. Another
    process may still grab it before we use it; the servers retry on a bind failure.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


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


def die_with_parent(parent_pid: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child die with ``parent_pid`` (None off Linux).

    Shared with :mod:`stalwart.testing`'s worker processes, which must not outlive a test.
    """
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


class Managed:
    """A server, or a group of servers, used as ``with X() as x``: started on entry, stopped
    on exit (whatever happened inside)."""

    def start(self) -> object:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

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


class _ServerProcess(Managed):
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
                    preexec_fn=die_with_parent(os.getpid()),
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
        return f"{self.binary} on {LOOPBACK}:{self.port}, log {self.log_file}"

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

    def __repr__(self) -> str:
        return f"<{type(self).__name__} port={self.port} pid={self.pid}>"
