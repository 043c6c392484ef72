"""Helpers shared by the test files and the test apps: one copy of each.

Two sides meet in Redis. The apps (run inside worker processes, the adapter apps too) count
each execution of a step body under :func:`exec_key`, log model calls under :func:`calls_key`
and block on gates (Redis lists under :func:`gate_key`) until the test pushes a token; a test
holds a given step with :func:`mark_gated` (the app checks :func:`wait_if_gated`). The tests
read the counts with :func:`execs` and :func:`model_log` and open gates with
:func:`open_gate`, so they can prove which bodies ran how often across SIGKILLs. The journal
readers (:func:`journal`, :func:`journaled`, :func:`done_keys`, :func:`entries_of`,
:func:`owners`, :func:`step_owners`) read what the worker recorded, through the client's
store.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import sys
import threading
import time
import traceback
import uuid
from typing import TYPE_CHECKING, Any, TypeVar

import redis.asyncio as aioredis

from stalwart import current_step
from stalwart.checkpoints import JournalEntry, Started, StepDone, encode_value

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from stalwart import Client, RunEvent, RunHandle
    from stalwart.testing import NatsServer, RedisServer, StalwartProcess

E = TypeVar("E")

COUNTER_ENV = "COUNTER_REDIS_URL"
"""Environment variable naming the Redis that apps count executions in (set by the tests)."""

# -- keys: the one spelling of each, for apps and tests alike ---------------------------------


def exec_key(run_id: str, step: str) -> str:
    """Counter of the executions of step ``step``'s body in run ``run_id``."""
    return f"exec:{run_id}:{step}"


def gate_key(run_id: str, name: str) -> str:
    """List a body (or agent code) blocks on until the test pushes a token."""
    return f"gate:{run_id}:{name}"


def gated_key(run_id: str, step: str) -> str:
    """Flag that makes step ``step`` wait on its gate (see :func:`wait_if_gated`)."""
    return f"gated:{run_id}:{step}"


def calls_key(run_id: str) -> str:
    """List of the model calls a scripted model really made in ``run_id``, in order."""
    return f"modelcalls:{run_id}"


# -- the apps' side (inside worker processes) ---------------------------------------------------

_redis: dict[int, aioredis.Redis] = {}


def counters() -> aioredis.Redis:
    """This process's connection to the counters' Redis (``COUNTER_REDIS_URL``).

    One per event loop: a worker has one loop, but a test that runs an app's code in the test
    process may do so on another loop than the suite's.
    """
    loop = id(asyncio.get_running_loop())
    if loop not in _redis:
        # No read timeout (redis-py >= 8 defaults to 5 s): gates block on BLPOP.
        _redis[loop] = aioredis.Redis.from_url(os.environ[COUNTER_ENV], socket_timeout=None)
    return _redis[loop]


async def count_execution() -> None:
    """Count one execution of the step body this is called from."""
    info = current_step()
    assert info is not None, "count_execution() outside a step body"
    await counters().incr(exec_key(info.run_id, info.key))


async def wait_gate(run_id: str, name: str, timeout: int = 60) -> None:
    """Block until the test opens gate ``name`` of ``run_id`` (one token per pass)."""
    # BLPOP in 1 s slices: redis-py >= 8 reads with a 5 s socket timeout by default, so one
    # long BLPOP would fail with "Timeout reading from ..." while the test holds the gate.
    for _ in range(max(timeout, 1)):
        if await counters().blpop([gate_key(run_id, name)], timeout=1) is not None:
            return
    raise TimeoutError(f"gate {name} of {run_id} never opened")


async def wait_if_gated(run_id: str, key: str) -> None:
    """Wait on gate ``key`` if the test marked it with :func:`mark_gated`."""
    if await counters().exists(gated_key(run_id, key)):
        await wait_gate(run_id, key)


# -- the tests' side -----------------------------------------------------------------------------


def rid() -> str:
    """A fresh run id."""
    return uuid.uuid4().hex


async def execs(counters: aioredis.Redis, run_id: str, key: str) -> int:
    """How often step ``key``'s body ran in ``run_id`` (0 if never)."""
    return int(await counters.get(exec_key(run_id, key)) or 0)


async def open_gate(counters: aioredis.Redis, run_id: str, *names: str) -> None:
    """Let one waiter through each gate in ``names`` of ``run_id``."""
    for name in names:
        await counters.lpush(gate_key(run_id, name), "go")


async def mark_gated(counters: aioredis.Redis, run_id: str, *keys: str) -> None:
    """Make each step in ``keys`` wait on its gate (apps check with :func:`wait_if_gated`)."""
    for key in keys:
        await counters.set(gated_key(run_id, key), 1)


async def model_log(counters: aioredis.Redis, run_id: str) -> list[str]:
    """The model calls logged under :func:`calls_key`, in order."""
    return [v.decode() for v in await counters.lrange(calls_key(run_id), 0, -1)]


async def start_server(server: NatsServer | RedisServer) -> None:
    """Start an embedded server without blocking the loop: its health wait runs in a thread.

    Not ``asyncio.to_thread(server.start)``: the server gets SIGKILLed when the thread that
    spawned it exits, so the spawn stays on the loop thread (as ``EmbeddedServers`` does it).
    """
    await server._start_async()


async def journal(client: Client, run_id: str) -> list[JournalEntry]:
    """The run's whole journal."""
    return await client.store.read_journal(run_id)


async def journaled(client: Client, run_id: str, key: str) -> bool:
    """Whether step ``key`` of ``run_id`` has a ``StepDone`` in the journal."""
    return any(
        isinstance(je.entry, StepDone) and je.entry.key == key
        for je in await journal(client, run_id)
    )


async def done_keys(client: Client, run_id: str) -> list[str]:
    """The keys of the steps ``run_id`` journaled as done, in order."""
    return [je.entry.key for je in await journal(client, run_id) if isinstance(je.entry, StepDone)]


async def has_all(client: Client, run_id: str, *keys: str) -> bool:
    """Whether every step in ``keys`` of ``run_id`` is journaled as done."""
    return set(keys) <= set(await done_keys(client, run_id))


async def entries_of(client: Client, run_id: str, kind: type[E]) -> list[E]:
    """The journal entries of one type (``StepDone``, ``StepAttempt``...), in order."""
    return [je.entry for je in await journal(client, run_id) if isinstance(je.entry, kind)]


def owners(entries: list[JournalEntry]) -> list[str]:
    """The worker of each placement (each ``Started`` entry), in order."""
    return [je.entry.worker for je in entries if isinstance(je.entry, Started)]


def step_owners(entries: list[JournalEntry]) -> dict[str, str]:
    """Which worker journaled each completed step, by step key."""
    return {je.entry.key: je.entry.worker for je in entries if isinstance(je.entry, StepDone)}


async def eventually(
    predicate: Callable[[], Awaitable[Any]],
    *,
    timeout: float = 20.0,
    interval: float = 0.02,
    message: Callable[[], str] | str = "condition not met",
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(message() if callable(message) else message)
        await asyncio.sleep(interval)


async def at_least(count: Awaitable[int], n: int) -> bool:
    """Whether ``count`` comes to ``n`` or more (a predicate for :func:`eventually`)."""
    return await count >= n


async def outcome(handle: RunHandle, *procs: StalwartProcess, timeout: float = 30) -> Any:
    """The run's result; on a timeout, fail with the logs of the worker processes ``procs``."""
    try:
        return await handle.result(timeout=timeout)
    except TimeoutError:
        logs = "\n".join(f"--- {p.name}\n{p.log_text()[-4000:]}" for p in procs)
        raise AssertionError(f"run {handle.run_id} did not end in {timeout}s\n{logs}") from None


async def collect_events(events: AsyncIterator[RunEvent]) -> list[RunEvent]:
    """Every event of an event stream, until it ends."""
    return [ev async for ev in events]


def step_done(key: str, value: Any, epoch: int = 5) -> StepDone:
    """A journal entry of a completed trivial step, for store-level tests."""
    return StepDone(
        key=key,
        kind="step",
        name=key,
        fp="fp",
        result=encode_value(value),
        epoch=epoch,
        worker="w1",
        at=1.0,
        duration=0.1,
    )


# -- a blocked event loop fails the test ---------------------------------------------------------


class LoopWatchdog:
    """Notices when the event loop stops running callbacks for longer than ``threshold``.

    A task on the loop wakes every ``interval`` seconds and measures how late it woke (the
    loop's lag); a thread beside it takes the loop thread's stack when a wake-up is overdue,
    so a failure can say which call blocked. Costs one short task wake-up per ``interval``.

    Between a test's fixtures and its body pytest stops the loop and runs plain code (sync
    fixtures, its own bookkeeping): the loop is then not blocked, just not running. The thread
    notices that (``loop.is_running()`` is false) and the wake-up after such a gap is not
    counted. Garbage collection is not counted either: a full collection of a test process
    that has imported every framework can pause it for a few hundred ms under load, and no
    coroutine can help that.
    """

    def __init__(self, threshold: float, interval: float = 0.05) -> None:
        self.threshold = threshold
        self.interval = interval
        self.max_lag = 0.0
        """The longest stretch, beyond ``interval``, that the loop left the task waiting."""
        self.stack = ""
        """Where the loop thread was when it was first seen blocked past ``threshold``."""
        self._last = time.monotonic()
        self._gap = False
        self._gc_total = 0.0
        self._gc_began: float | None = None
        self._stop = threading.Event()
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None

    @property
    def blocked(self) -> bool:
        """Whether the loop was blocked for longer than ``threshold``."""
        return self.max_lag > self.threshold

    async def _beat(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t0, gc0 = loop.time(), self._gc_total
            self._last = time.monotonic()
            await asyncio.sleep(self.interval)
            if self._gap:  # the loop was stopped meanwhile: that wait says nothing
                self._gap = False
                continue
            lag = loop.time() - t0 - self.interval - (self._gc_total - gc0)
            self.max_lag = max(self.max_lag, lag)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_began = time.perf_counter()
        elif self._gc_began is not None:
            self._gc_total += time.perf_counter() - self._gc_began
            self._gc_began = None

    def _watch(self, loop: asyncio.AbstractEventLoop, loop_thread: int) -> None:
        while not self._stop.wait(self.interval):
            if not loop.is_running():
                self._gap = True
                self._last = time.monotonic()  # nothing is overdue while the loop is stopped
                continue
            if self.stack or self._gc_began is not None:
                continue
            if time.monotonic() - self._last <= self.threshold + self.interval + self._gc_total:
                continue
            frame = sys._current_frames().get(loop_thread)
            if frame is not None:
                self.stack = "".join(traceback.format_stack(frame, limit=12))

    def start(self) -> None:
        """Start watching the running loop (call from a coroutine on it)."""
        loop = asyncio.get_running_loop()
        gc.callbacks.append(self._on_gc)
        self._task = loop.create_task(self._beat(), name="loop-watchdog")
        self._thread = threading.Thread(
            target=self._watch,
            args=(loop, threading.get_ident()),
            daemon=True,
            name="loop-watchdog",
        )
        self._thread.start()

    async def stop(self) -> None:
        """Stop watching; :attr:`max_lag` and :attr:`stack` keep what was seen."""
        self._stop.set()
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._on_gc)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._thread is not None:
            self._thread.join()

    def report(self) -> str:
        """What a failing test says about the block."""
        where = f"\nThe loop thread was at:\n{self.stack}" if self.stack else ""
        return (
            f"the event loop was blocked for {self.max_lag:.3f} s (limit {self.threshold} s): "
            "a blocking call runs in a coroutine (use anyio.to_thread.run_sync or an async "
            "API), or mark the test @pytest.mark.blocks_loop if it must block." + where
        )
