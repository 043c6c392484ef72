"""A crash demonstration's stage: servers, two worker processes, a supervisor, a client."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio.to_thread

from stalwart.client import Client
from stalwart.config import Settings
from stalwart.servers import EmbeddedServers
from stalwart.supervisor import Supervisor
from stalwart.testing._processes import StalwartProcess, worker_process

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path


@dataclass
class CrashStage:
    """What :func:`crash_stage` set up: the worker processes (by id) and a connected client."""

    client: Client
    workers: dict[str, StalwartProcess]
    t0: float = field(default_factory=time.time)

    def kill(self, worker_id: str) -> bool:
        """SIGKILL ``worker_id`` (once; the other worker resumes its runs). True if it was
        killed now."""
        proc = self.workers.pop(worker_id, None)
        if proc is None:
            return False
        proc.kill()
        print(f"+{time.time() - self.t0:5.2f}s  SIGKILL {worker_id}", flush=True)
        return True

    def stamp(self, at: float) -> str:
        """``+1.23s``: an event's time since the stage was ready."""
        return f"+{at - self.t0:5.2f}s"


@contextlib.asynccontextmanager
async def crash_stage(
    app: str,
    *,
    path: str | Path,
    worker_ids: tuple[str, ...] = ("worker-a", "worker-b"),
    lease_ttl: int = 2,
    start_timeout: float = 60.0,
    env: dict[str, str] | None = None,
) -> AsyncIterator[CrashStage]:
    """Run ``app`` (``module:attr``, importable from ``path``) on worker processes, with a
    supervisor, for a demonstration that SIGKILLs one of them.

    Uses the servers of ``STALWART_NATS_URL`` / ``STALWART_REDIS_URL`` when both are set,
    else starts embedded ones and exports their URLs (so code that connects from the
    environment, like the adapters' runners, finds them). Waits until every worker has
    registered; on exit terminates the workers and stops the supervisor. ``env`` is added
    to the workers' environment.
    """
    given = Settings.from_env()
    async with contextlib.AsyncExitStack() as stack:
        if given.nats_url and given.redis_url:
            nats_url, redis_url = given.nats_url, given.redis_url
        else:
            servers = await stack.enter_async_context(EmbeddedServers())
            nats_url, redis_url = servers.nats_url, servers.redis_url
            os.environ.update(STALWART_NATS_URL=nats_url, STALWART_REDIS_URL=redis_url)
        settings = Settings.from_env(nats_url=nats_url, redis_url=redis_url, lease_ttl=lease_ttl)
        pythonpath = os.pathsep.join(p for p in (str(path), os.environ.get("PYTHONPATH")) if p)
        workers = {
            wid: worker_process(
                app,
                nats_url=nats_url,
                redis_url=redis_url,
                worker_id=wid,
                lease_ttl=lease_ttl,
                namespace=settings.namespace,
                extra_env={"PYTHONPATH": pythonpath, **(env or {})},
            ).start()
            for wid in worker_ids
        }
        stack.push_async_callback(_terminate, workers)
        supervisor = Supervisor(settings)
        supervisor_task = asyncio.create_task(supervisor.run())
        stack.push_async_callback(_stop, supervisor, supervisor_task)
        client = await Client.connect(settings=settings)
        stack.push_async_callback(client.close)
        await _registered(client, set(workers), start_timeout)
        yield CrashStage(client, workers)


async def _registered(client: Client, ids: set[str], timeout: float) -> None:
    """Until every worker has registered (importing a framework takes a few seconds)."""
    deadline = time.monotonic() + timeout
    while not ids <= {w.worker_id for w in await client.broker.workers()}:
        if time.monotonic() > deadline:
            raise TimeoutError(f"workers {sorted(ids)} did not start within {timeout:g}s")
        await asyncio.sleep(0.1)


async def _terminate(workers: dict[str, StalwartProcess]) -> None:
    # Waiting for a drained worker to exit takes seconds: in a thread, so the event loop
    # (the supervisor, the client, the caller's tasks) keeps running meanwhile.
    def terminate_all() -> None:
        for proc in workers.values():
            proc.terminate(timeout=10)

    await anyio.to_thread.run_sync(terminate_all)


async def _stop(supervisor: Supervisor, task: asyncio.Task[None]) -> None:
    supervisor.stop()
    await task
