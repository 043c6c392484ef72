"""Local mode: embedded servers, ``stalwart dev`` and ``stalwart demo``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from stalwart._secrets import mask_urls
from stalwart.api import serve_api
from stalwart.checkpoints._runs import describe_epoch
from stalwart.client import Client
from stalwart.config import PATH_FIELDS
from stalwart.errors import ConfigurationError
from stalwart.messages import (
    EV_RESUMED,
    EV_STARTED,
    EV_STEP_COMPLETED,
    EV_STEP_STARTED,
    TERMINAL_EVENTS,
    EventData,
    RunEvent,
    RunResumedData,
    StepEndedData,
    event_data,
)
from stalwart.servers import EmbeddedServers
from stalwart.supervisor import Supervisor
from stalwart.testing import StalwartProcess, worker_process

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from stalwart.config import Settings


def _state_file() -> Path:
    base = os.environ.get("STALWART_STATE_DIR") or str(Path.home() / ".stalwart")
    return Path(base) / "dev.json"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def file_settings_env(settings: Settings) -> dict[str, str]:
    """The settings that name files (TLS, nkey, creds, keyring) as ``STALWART_*`` variables.

    For the worker processes of ``dev`` and ``demo``: those may have them from flags, which
    the workers would not see (a ``--config`` file reaches them as ``STALWART_CONFIG``).
    """
    return {
        f"STALWART_{name.upper()}": str(getattr(settings, name))
        for name in sorted(PATH_FIELDS)
        if getattr(settings, name)
    }


def resolve_client_settings(settings: Settings) -> Settings:
    """Fill in missing URLs from a running ``stalwart dev``, else explain what is missing."""
    if settings.nats_url and settings.redis_url:
        return settings
    path = _state_file()
    if path.exists():
        state = json.loads(path.read_text())
        if _pid_alive(int(state.get("pid", 0))):
            return msgspec.structs.replace(
                settings,
                nats_url=settings.nats_url or state["nats_url"],
                redis_url=settings.redis_url or state["redis_url"],
            )
    raise ConfigurationError(
        "no servers configured: pass --nats-url/--redis-url, set STALWART_NATS_URL and "
        "STALWART_REDIS_URL, or start `stalwart dev APP` in another terminal"
    )


@contextlib.asynccontextmanager
async def embedded_if_needed(settings: Settings) -> AsyncIterator[Settings]:
    """Yield settings with server URLs, starting embedded servers for the missing ones."""
    if settings.nats_url and settings.redis_url:
        yield settings
        return
    print(
        "no STALWART_NATS_URL / STALWART_REDIS_URL set: starting private embedded servers "
        "(for local use only; other processes reach them only through the URLs below)",
        flush=True,
    )
    async with EmbeddedServers() as servers:
        resolved = msgspec.structs.replace(
            settings,
            nats_url=settings.nats_url or servers.nats_url,
            redis_url=settings.redis_url or servers.redis_url,
        )
        print(f"embedded nats-server: {mask_urls(resolved.nats_url or '')}", flush=True)
        print(f"embedded redis-server: {mask_urls(resolved.redis_url or '')}", flush=True)
        yield resolved


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "running"
    if code < 0:
        name = signal.Signals(-code).name
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return f"killed by {name}{hint}"
    return f"exited with code {code}"


async def dev(app: str, settings: Settings, *, workers: int = 2) -> int:
    """Servers (embedded unless configured), a supervisor and ``workers`` worker processes."""
    async with embedded_if_needed(settings) as s:
        assert s.nats_url and s.redis_url
        state = _state_file()
        state.parent.mkdir(parents=True, exist_ok=True)
        state.write_text(
            json.dumps({"nats_url": s.nats_url, "redis_url": s.redis_url, "pid": os.getpid()})
        )
        procs = [
            worker_process(
                app,
                nats_url=s.nats_url,
                redis_url=s.redis_url,
                worker_id=f"dev-worker-{i + 1}",
                lease_ttl=s.lease_ttl,
                concurrency=s.concurrency,
                namespace=s.namespace,
                extra_env=file_settings_env(s),
                keep_log=True,  # printed below, for the user to read
            ).start()
            for i in range(workers)
        ]
        supervisor = Supervisor(s, services=[serve_api])
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        sup_task = asyncio.create_task(supervisor.run())
        print(
            f"{workers} workers serving {app}; logs: " + ", ".join(str(p.log_path) for p in procs)
        )
        print(
            "try: stalwart submit AGENT '<json input>' --wait    (Ctrl-C stops everything)",
            flush=True,
        )
        reported: set[int] = set()
        try:
            while not stop.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
                for i, p in enumerate(procs):
                    if not p.alive() and i not in reported:
                        reported.add(i)
                        code = p.proc.returncode if p.proc else None
                        print(
                            f"worker {p.name} {_exit_reason(code)}; log: {p.log_path}", flush=True
                        )
        finally:
            for p in procs:
                # The drain budget, then the hand-over of cancelled steps and the shutdown.
                p.terminate(timeout=s.drain_timeout + 10)
            supervisor.stop()
            await sup_task
            state.unlink(missing_ok=True)
    return 0


async def _wait_for_workers(client: Client, ids: set[str], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ids <= {w.worker_id for w in await client.broker.workers()}:
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"workers {sorted(ids)} did not start within {timeout:.0f}s")


async def demo(settings: Settings, *, kill_after: int = 4, lease_ttl_given: bool = False) -> int:
    """Run the demo agent on two workers, SIGKILL the owner mid-run, watch it resume."""
    if not lease_ttl_given and "STALWART_LEASE_TTL" not in os.environ:
        settings = msgspec.structs.replace(settings, lease_ttl=2)  # a snappier demo
    async with embedded_if_needed(settings) as s:
        assert s.nats_url and s.redis_url
        procs: dict[str, StalwartProcess] = {
            wid: worker_process(
                "stalwart._demo_agent:app",
                nats_url=s.nats_url,
                redis_url=s.redis_url,
                worker_id=wid,
                lease_ttl=s.lease_ttl,
                namespace=s.namespace,
                extra_env=file_settings_env(s),
            ).start()
            for wid in ("worker-a", "worker-b")
        }
        supervisor = Supervisor(s, services=[serve_api])
        sup_task = asyncio.create_task(supervisor.run())
        client = await Client.connect(settings=s)
        try:
            await _wait_for_workers(client, set(procs))
            return await _demo_run(client, procs, s, kill_after)
        finally:
            await client.close()
            for p in procs.values():
                p.terminate(timeout=10)
            supervisor.stop()
            await sup_task


def _typed(event: RunEvent) -> EventData | None:
    """The event's typed data; None where it has none or another shape (events are input)."""
    try:
        return event_data(event)
    except (msgspec.ValidationError, TypeError):
        return None


async def _demo_run(
    client: Client, procs: dict[str, StalwartProcess], s: Settings, kill_after: int
) -> int:
    print(
        f"\nlease TTL {s.lease_ttl}s; workers: {', '.join(procs)}; supervisor running\n", flush=True
    )
    handle = await client.submit("research", "Q4 market trends")
    t0 = time.time()
    killed_at: float | None = None
    killed: str = ""
    started_on: dict[str, set[str]] = {}
    completed = 0
    failover: float | None = None
    async for ev in handle.events():
        t = f"+{ev.at - t0:5.2f}s"
        data = _typed(ev)
        if ev.type in (EV_STARTED, EV_RESUMED):
            extra = (
                f", {data.journaled_steps} steps to replay"
                if isinstance(data, RunResumedData)
                else ""
            )
            print(
                f"{t}  {ev.type:<14} on {ev.worker} (epoch {describe_epoch(ev.epoch)}{extra})",
                flush=True,
            )
        elif ev.type == EV_STEP_STARTED:
            started_on.setdefault(ev.step, set()).add(ev.worker)
        elif ev.type == EV_STEP_COMPLETED:
            completed += 1
            ms = data.duration * 1000 if isinstance(data, StepEndedData) else 0.0
            print(f"{t}  step {ev.step:<16} done on {ev.worker:<9} in {ms:4.0f} ms", flush=True)
            if killed_at and failover is None and ev.worker != killed:
                failover = ev.at - killed_at
            if completed == kill_after and not killed_at:
                killed = ev.worker
                procs[killed].kill()
                killed_at = time.time()
                print(
                    f"+{killed_at - t0:5.2f}s  SIGKILL {killed} (pid {procs[killed].pid})",
                    flush=True,
                )
        elif ev.type in TERMINAL_EVENTS:
            print(f"{t}  {ev.type} on {ev.worker}", flush=True)
            break
    result = await handle.result(timeout=30)
    print(f"\nresult: {json.dumps(result)}")
    if failover is not None:
        print(
            f"failover: {failover:.2f}s from SIGKILL to the first step completed on the new worker"
        )
    rerun = [step for step, workers in started_on.items() if len(workers) > 1]
    if rerun:
        print(
            f"re-run after the crash (in flight when it died; at-least-once): {', '.join(sorted(rerun))}"
        )
    print(
        "every other step ran exactly once; journal: "
        + f"{len(await client.store.read_journal(handle.run_id))} entries"
    )
    return 0
