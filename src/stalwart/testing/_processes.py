"""Worker, supervisor and other ``stalwart`` CLI processes for crash tests and the demo."""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from stalwart.servers._process import die_with_parent

if TYPE_CHECKING:
    from types import TracebackType


# Logs of processes started here that nobody asked to keep: removed when this (the test or
# demo) process exits, so a day of test runs does not leave hundreds of files in /tmp.
_TEMPORARY_LOGS: set[Path] = set()


@atexit.register
def _remove_temporary_logs() -> None:
    if os.environ.get("STALWART_KEEP_LOGS"):
        return
    for path in list(_TEMPORARY_LOGS):
        path.unlink(missing_ok=True)
    _TEMPORARY_LOGS.clear()


class StalwartProcess:
    """A ``python -m stalwart <args>`` child process that dies with its parent.

    ``kill()`` is a real SIGKILL, ``pause()``/``resume()`` are SIGSTOP/SIGCONT (a worker that
    freezes, as in a long GC pause or a stalled VM, and then comes back as a zombie).

    Its output goes to a temporary file, :attr:`log_path`, readable until :meth:`close`
    (or the end of this process) removes it; ``keep_log=True`` keeps it (as ``stalwart dev``
    does, which prints the paths), and so does the environment variable
    ``STALWART_KEEP_LOGS=1`` for every process, to read them after a failed test run.
    """

    def __init__(
        self,
        args: list[str],
        *,
        env: dict[str, str] | None = None,
        name: str = "",
        keep_log: bool = False,
    ) -> None:
        self.args = args
        self.name = name or args[0]
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        fd, path = tempfile.mkstemp(prefix=f"stalwart-{self.name}-", suffix=".log")
        os.close(fd)
        self.log_path = Path(path)
        if not keep_log:
            _TEMPORARY_LOGS.add(self.log_path)

    def start(self) -> StalwartProcess:
        """Spawn the process; its output goes to :attr:`log_path`."""
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "stalwart", *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                preexec_fn=die_with_parent(os.getpid()),
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        """The child's pid."""
        assert self.proc is not None, "not started"
        return self.proc.pid

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait()

    def pause(self) -> None:
        """SIGSTOP: the process freezes with its connections open."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        os.kill(self.pid, signal.SIGCONT)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM (graceful drain), wait, SIGKILL if it does not exit; returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()

    def log_text(self) -> str:
        """Everything the process printed so far ("" once :meth:`close` removed the log)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def close(self) -> None:
        """SIGKILL the process if it still runs, and remove its log unless it is kept."""
        self.kill()
        if self.log_path in _TEMPORARY_LOGS and not os.environ.get("STALWART_KEEP_LOGS"):
            _TEMPORARY_LOGS.discard(self.log_path)
            self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> StalwartProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def worker_process(
    app: str,
    *,
    nats_url: str,
    redis_url: str,
    worker_id: str,
    lease_ttl: int = 2,
    concurrency: int = 16,
    namespace: str = "stalwart",
    extra_env: dict[str, str] | None = None,
    keep_log: bool = False,
) -> StalwartProcess:
    """A ``stalwart worker APP`` process (not started yet)."""
    args = [
        "worker",
        app,
        "--nats-url",
        nats_url,
        "--redis-url",
        redis_url,
        "--worker-id",
        worker_id,
        "--lease-ttl",
        str(lease_ttl),
        "--concurrency",
        str(concurrency),
        "--namespace",
        namespace,
    ]
    return StalwartProcess(args, env=extra_env, name=worker_id, keep_log=keep_log)
