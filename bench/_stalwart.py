"""Stalwart worker processes and a client for one namespace, started and stopped together."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from bench._util import bench_env
from stalwart import Client, Settings
from stalwart.testing import StalwartProcess, worker_process

if TYPE_CHECKING:
    from stalwart import RunHandle, RunRecord

APP = "bench.agents:app"


def supervisor_process(cl: Cluster) -> StalwartProcess:
    """A started ``stalwart supervisor`` process for the cluster's namespace."""
    args = ["supervisor", "--nats-url", cl.nats_url, "--redis-url", cl.redis_url,
            "--namespace", cl.ns, "--lease-ttl", str(cl.lease_ttl)]  # fmt: skip
    return StalwartProcess(args, env=bench_env(), name="supervisor").start()


class Cluster:
    """Workers serving ``bench.agents:app`` in namespace ``ns``, plus a client.

    Workers are real ``stalwart worker`` processes (so they can be SIGKILLed and their CPU
    and memory read from ``/proc``); use ``async with``.
    """

    def __init__(self, nats_url: str, redis_url: str, ns: str, *, lease_ttl: int = 2) -> None:
        self.nats_url = nats_url
        self.redis_url = redis_url
        self.ns = ns
        self.lease_ttl = lease_ttl
        self.settings = Settings(
            nats_url=nats_url, redis_url=redis_url, namespace=ns, lease_ttl=lease_ttl
        )
        self.client: Client | None = None
        self.workers: dict[str, StalwartProcess] = {}

    async def __aenter__(self) -> Cluster:
        self.client = await Client.connect(settings=self.settings)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.kill_all()
        if self.client is not None:
            await self.client.close()

    @property
    def c(self) -> Client:
        assert self.client is not None, "use `async with Cluster(...)`"
        return self.client

    def start_worker(
        self,
        worker_id: str,
        *,
        concurrency: int = 16,
        lease_ttl: int | None = None,
        env: dict[str, str] | None = None,
        app: str = APP,
    ) -> StalwartProcess:
        proc = worker_process(
            app,
            nats_url=self.nats_url,
            redis_url=self.redis_url,
            worker_id=worker_id,
            lease_ttl=lease_ttl or self.lease_ttl,
            concurrency=concurrency,
            namespace=self.ns,
            extra_env={**bench_env(), **(env or {})},
        ).start()
        self.workers[worker_id] = proc
        return proc

    async def wait_workers(self, ids: list[str], timeout: float = 30.0) -> None:
        """Wait until every worker in ``ids`` has published its first heartbeat."""
        deadline = time.monotonic() + timeout
        while True:
            alive = {w.worker_id for w in await self.c.broker.workers()}
            if set(ids) <= alive:
                return
            for wid in ids:
                proc = self.workers.get(wid)
                if proc is not None and not proc.alive():
                    raise RuntimeError(f"worker {wid} exited:\n{proc.log_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"workers {sorted(set(ids) - alive)} never came up")
            await asyncio.sleep(0.05)

    async def start_workers(
        self,
        ids: list[str],
        *,
        concurrency: int = 16,
        lease_ttl: int | None = None,
        env: dict[str, str] | None = None,
        app: str = APP,
    ) -> list[StalwartProcess]:
        procs = [
            self.start_worker(w, concurrency=concurrency, lease_ttl=lease_ttl, env=env, app=app)
            for w in ids
        ]
        await self.wait_workers(ids)
        return procs

    def kill_all(self) -> None:
        for proc in self.workers.values():
            proc.kill()
            proc.log_path.unlink(missing_ok=True)
        self.workers.clear()

    async def submit(self, agent: str, inp: Any, run_id: str | None = None) -> RunHandle:
        return await self.c.submit(agent, inp, run_id=run_id, require_registered=False)

    async def wait_record(
        self, handle: RunHandle, timeout: float = 120.0, poll: float = 0.02
    ) -> RunRecord:
        """Poll the run record until the run ended (no event subscription: no extra load)."""
        deadline = time.monotonic() + timeout
        while True:
            record = await handle.status()
            if record.terminal:
                return record
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {handle.run_id} did not end within {timeout}s")
            await asyncio.sleep(poll)

    async def result(self, handle: RunHandle, timeout: float = 120.0) -> Any:
        record = await self.wait_record(handle, timeout)
        if record.status != "completed":
            raise RuntimeError(f"run {handle.run_id} {record.status}: {record.error}")
        return record.decode_result()
