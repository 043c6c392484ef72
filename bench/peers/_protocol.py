"""How the harness drives a peer: a child process reading JSON commands on stdin.

Each command is one JSON line ``{"cmd": name, ...args}``; the peer answers one JSON line,
``{"ok": result}`` or ``{"error": text}``. Peer libraries therefore never load into the
harness process (and ``--quick`` does not need them installed), and a peer can be
SIGKILLed mid-workflow to measure its recovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._util import bench_env, die_with_parent

Handler = Callable[..., Any]


class PeerError(RuntimeError):
    """The peer answered a command with an error (its traceback is in the message)."""


_REPLIES = sys.stdout
"""Where replies go: :func:`serve` points ``sys.stdout`` at stderr, so that a library's
print or log line cannot end up in the command channel."""


def _reply(obj: dict[str, Any]) -> None:
    _REPLIES.write(json.dumps(obj) + "\n")
    _REPLIES.flush()


def serve(handlers: dict[str, Handler]) -> None:
    """The peer side: answer commands until stdin closes.

    Coroutine handlers run on the event loop, which keeps running between commands (stdin
    is read in a thread), so background tasks such as a Temporal worker keep polling.
    Plain handlers run in a thread.
    """
    sys.stdout = sys.stderr
    asyncio.run(_serve(handlers))


async def _serve(handlers: dict[str, Handler]) -> None:
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        if not line.strip():
            continue
        msg = json.loads(line)
        name = msg.pop("cmd")
        handler = handlers[name]
        try:
            if inspect.iscoroutinefunction(handler):
                result = await handler(**msg)
            else:  # in a thread: sync libraries (DBOS) refuse to run under an event loop
                result = await asyncio.to_thread(handler, **msg)
            _reply({"ok": result})
        except Exception:
            _reply({"error": traceback.format_exc()})


class PeerProcess:
    """The harness side: a ``python -m <module>`` child and its command channel."""

    def __init__(self, module: str, args: list[str] | None = None, name: str = "") -> None:
        self.module = module
        self.args = args or []
        self.name = name or module.rsplit(".", 1)[-1]
        fd, path = tempfile.mkstemp(prefix=f"bench-{self.name}-", suffix=".log")
        os.close(fd)
        self.log_path = Path(path)
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> PeerProcess:
        with self.log_path.open("ab") as logf:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", self.module, *self.args,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=logf,
                env={**os.environ, **bench_env()}, preexec_fn=die_with_parent(),
                limit=64 * 1024 * 1024,
            )  # fmt: skip
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def call(self, cmd: str, timeout: float = 600.0, **args: Any) -> Any:
        assert self.proc is not None and self.proc.stdin and self.proc.stdout
        self.proc.stdin.write((json.dumps({"cmd": cmd, **args}) + "\n").encode())
        await self.proc.stdin.drain()
        while True:  # a line that is not a reply (a library writing to fd 1) is skipped
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
            if not line:
                raise PeerError(f"{self.name} exited during {cmd!r}:\n{self.log_tail()}")
            if line.startswith(b'{"ok"') or line.startswith(b'{"error"'):
                break
            with self.log_path.open("ab") as f:
                f.write(b"stdout: " + line)
        reply = json.loads(line)
        if "error" in reply:
            raise PeerError(f"{self.name} {cmd!r} failed:\n{reply['error']}")
        return reply["ok"]

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    async def kill(self) -> None:
        """SIGKILL (a crash, for recovery measurements) and reap."""
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()

    async def close(self) -> None:
        """Close stdin (the peer exits), then make sure it is gone."""
        if self.proc is not None and self.proc.returncode is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 20)
            except TimeoutError:
                await self.kill()
        self.log_path.unlink(missing_ok=True)
