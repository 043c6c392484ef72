"""Temporal (``temporalio``) against the dev server, driven by the harness
(``python -m bench.peers.temporal_peer``).

The same shapes as ``bench.agents``: trivial activities (and local activities) in a loop,
a workflow with ``n`` completed activities that then waits (replayed by the ``Replayer``),
and a model-call loop whose activities take the whole conversation as input.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from importlib.metadata import version
from typing import Any

from temporalio import activity, workflow
from temporalio.client import Client, WorkflowHistory
from temporalio.worker import Replayer, Worker

with workflow.unsafe.imports_passed_through():
    from bench._text import message
    from bench.peers import _load
    from bench.peers._protocol import serve

TASK_QUEUE = "bench"
_TIMEOUT = timedelta(seconds=60)


@activity.defn
async def stamp(i: int) -> float:
    """A trivial activity; returns when it ran, so the harness sees the time between steps."""
    return time.time()


@activity.defn
async def model(turn: int, conversation: list[dict[str, str]]) -> dict[str, str]:
    """A scripted model call taking the whole conversation as input (as activities do)."""
    return {"role": "assistant", "content": message(turn)}


@workflow.defn
class StepsWf:
    @workflow.run
    async def run(self, n: int, local: bool) -> list[float]:
        out: list[float] = []
        for i in range(n):
            if local:
                t = await workflow.execute_local_activity(stamp, i, start_to_close_timeout=_TIMEOUT)
            else:
                t = await workflow.execute_activity(stamp, i, start_to_close_timeout=_TIMEOUT)
            out.append(t)
        return out


@workflow.defn
class LoadWf:
    """``n`` trivial activities (local or regular); returns [workflow start, each one's time]."""

    @workflow.run
    async def run(self, n: int, local: bool) -> list[float]:
        out = [workflow.now().timestamp()]  # the workflow task's start: its placement
        for i in range(n):
            if local:
                t = await workflow.execute_local_activity(stamp, i, start_to_close_timeout=_TIMEOUT)
            else:
                t = await workflow.execute_activity(stamp, i, start_to_close_timeout=_TIMEOUT)
            out.append(t)
        return out


@workflow.defn
class HistoryWf:
    """``n`` completed activities (run ``batch`` at a time to build it quickly), then waits."""

    def __init__(self) -> None:
        self.done = 0
        self.released = False

    @workflow.run
    async def run(self, n: int, batch: int) -> int:
        while self.done < n:
            k = min(batch, n - self.done)
            await asyncio.gather(
                *(
                    workflow.execute_activity(stamp, self.done + j, start_to_close_timeout=_TIMEOUT)
                    for j in range(k)
                )
            )
            self.done += k
        await workflow.wait_condition(lambda: self.released)
        return n

    @workflow.query
    def progress(self) -> int:
        return self.done

    @workflow.signal
    def release(self) -> None:
        self.released = True


@workflow.defn
class ChatWf:
    @workflow.run
    async def run(self, calls: int, prompt: str) -> int:
        conversation = [{"role": "user", "content": prompt}]
        for turn in range(calls):
            reply = await workflow.execute_activity(
                model, args=[turn, conversation], start_to_close_timeout=_TIMEOUT
            )
            conversation.append(reply)
        return len(conversation)


_HEADER = 4
"""Events before the first activity: execution started, first workflow task."""
_BLOCK = 6
"""Events per sequential activity: scheduled, started, completed, and a workflow task."""


def synthesize(real: WorkflowHistory, n: int) -> WorkflowHistory:
    """A sequential ``HistoryWf`` history of ``n`` activities, made from a real one.

    Building a 10,000-activity history on the dev server would take ~8 minutes at ~45 ms
    per activity; the events of a sequential history repeat in blocks of six, so the
    real history's first block is repeated with event ids, activity ids, inputs and the
    ids the events point at renumbered. The harness replays a real and a synthetic
    history of the same length to check that they cost the same.
    """
    events = list(real.events)
    header, block = events[:_HEADER], events[_HEADER : _HEADER + _BLOCK]
    if len(block) < _BLOCK or any(
        e.event_type != t for e, t in zip(block, (10, 11, 12, 5, 6, 7), strict=True)
    ):
        raise ValueError("the real history is not a sequential HistoryWf history")
    out = []
    for e in header:
        c = type(e)()
        c.CopyFrom(e)
        out.append(c)
    inp = out[0].workflow_execution_started_event_attributes.input.payloads[0]
    inp.data = f"{n}".encode()
    for i in range(n):
        base = _HEADER + i * _BLOCK  # event id of this block's first event, minus one
        copies = []
        for k, e in enumerate(block):
            c = type(e)()
            c.CopyFrom(e)
            c.event_id = base + k + 1
            copies.append(c)
        sched, started, done, _wft_sched, wft_st, wft_c = copies
        a = sched.activity_task_scheduled_event_attributes
        a.activity_id = str(i + 1)
        a.input.payloads[0].data = f"{i}".encode()
        started.activity_task_started_event_attributes.scheduled_event_id = base + 1
        done.activity_task_completed_event_attributes.scheduled_event_id = base + 1
        done.activity_task_completed_event_attributes.started_event_id = base + 2
        wft_st.workflow_task_started_event_attributes.scheduled_event_id = base + 4
        wft_c.workflow_task_completed_event_attributes.scheduled_event_id = base + 4
        wft_c.workflow_task_completed_event_attributes.started_event_id = base + 5
        out.extend(copies)
    return WorkflowHistory(real.workflow_id, out)


class Peer:
    def __init__(self) -> None:
        self.client: Client | None = None
        self.worker: Worker | None = None
        self.task: asyncio.Task[None] | None = None
        self.seq = 0
        self.histories: dict[str, WorkflowHistory] = {}

    @property
    def c(self) -> Client:
        assert self.client is not None, "init first"
        return self.client

    def _id(self, kind: str) -> str:
        self.seq += 1
        return f"{kind}-{time.time_ns()}-{self.seq}"

    async def init(self, address: str) -> dict[str, Any]:
        self.client = await Client.connect(address)
        self.worker = Worker(
            self.client,
            task_queue=TASK_QUEUE,
            workflows=[StepsWf, HistoryWf, ChatWf, LoadWf],
            activities=[stamp, model],
        )
        self.task = asyncio.create_task(self.worker.run())
        return {"version": version("temporalio")}

    async def overhead(self, n: int, local: bool) -> list[float]:
        stamps: list[float] = await self.c.execute_workflow(
            StepsWf.run, args=[n, local], id=self._id("steps"), task_queue=TASK_QUEUE
        )
        return stamps

    async def build(self, n: int, batch: int = 1, timeout: float = 1800.0) -> dict[str, Any]:
        """Start a ``HistoryWf``; once ``n`` activities completed, fetch its history (timed)."""
        wf_id = self._id("history")
        t0 = time.perf_counter()
        handle = await self.c.start_workflow(
            HistoryWf.run, args=[n, batch], id=wf_id, task_queue=TASK_QUEUE
        )
        deadline = time.monotonic() + timeout
        while await handle.query(HistoryWf.progress) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"history of {n} activities not built in {timeout}s")
            await asyncio.sleep(0.2)
        built = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.histories[wf_id] = await handle.fetch_history()
        fetch = time.perf_counter() - t0
        return {"key": wf_id, "events": len(self.histories[wf_id].events), "build": built,
                "fetch": fetch}  # fmt: skip

    def synth(self, source: str, n: int) -> dict[str, Any]:
        """Store a synthetic sequential history of ``n`` activities made from ``source``."""
        key = f"synthetic-{n}"
        self.histories[key] = synthesize(self.histories[source], n)
        return {"key": key, "events": len(self.histories[key].events)}

    async def replay(self, key: str, reps: int) -> list[float]:
        """Replay a stored history ``reps`` times with the ``Replayer``; seconds for each."""
        replayer = Replayer(workflows=[HistoryWf])
        times: list[float] = []
        for _ in range(reps):
            t0 = time.perf_counter()
            await replayer.replay_workflow(self.histories[key])
            times.append(time.perf_counter() - t0)
        return times

    async def terminate(self, key: str) -> None:
        await self.c.get_workflow_handle(key).terminate("benchmark done")

    async def _start_load(self, steps: int, local: bool) -> Any:
        return await self.c.start_workflow(
            LoadWf.run, args=[steps, local], id=self._id("load"), task_queue=TASK_QUEUE
        )

    async def throughput(self, runs: int, steps: int, local: bool) -> dict[str, Any]:
        """``runs`` concurrent ``LoadWf`` workflows of ``steps`` activities (the worker's
        default slots: 100 workflow tasks, 100 activities); their stamp lists."""
        return await _load.run_batch_async(
            lambda: self._start_load(steps, local), runs, lambda h: h.result()
        )

    async def latency(self, rate: float, runs: int, steps: int, local: bool) -> dict[str, Any]:
        """Start ``runs`` workflows at ``rate``/s; (start time, stamps) per workflow."""
        return await _load.run_paced_async(
            lambda: self._start_load(steps, local), rate, runs, lambda h: h.result()
        )

    async def chat(self, calls: int, prompt: str) -> dict[str, Any]:
        """Run the model-call loop; return the size of its stored history."""
        wf_id = self._id("chat")
        await self.c.execute_workflow(
            ChatWf.run, args=[calls, prompt], id=wf_id, task_queue=TASK_QUEUE
        )
        history = await self.c.get_workflow_handle(wf_id).fetch_history()
        return {
            "events": len(history.events),
            "bytes": sum(e.ByteSize() for e in history.events),
        }


def main() -> None:
    peer = Peer()
    serve(
        {
            "init": peer.init,
            "overhead": peer.overhead,
            "build": peer.build,
            "synth": peer.synth,
            "replay": peer.replay,
            "terminate": peer.terminate,
            "chat": peer.chat,
            "throughput": peer.throughput,
            "latency": peer.latency,
        }
    )


if __name__ == "__main__":
    main()
