"""DBOS Transact on PostgreSQL, driven by the harness (``python -m bench.peers.dbos_peer``).

Steps and workflows mirror ``bench.agents``: a trivial step in a loop (overhead), and a
workflow of ``n`` steps followed by a ``gate`` step that never returns (recovery: the
harness SIGKILLs this process and times a fresh one's ``DBOS.launch()`` until the gate
step runs again).
"""

from __future__ import annotations

import statistics
import threading
import time
from importlib.metadata import version
from typing import Any

from dbos import DBOS, DBOSConfig, SetWorkflowID

from bench.peers import _load
from bench.peers._protocol import serve

_gate = threading.Event()
_marks: dict[str, float] = {}


@DBOS.step()
def noop(i: int) -> int:
    return i


def plain(i: int) -> int:
    return i


@DBOS.step()
def gate() -> None:
    _marks["gate"] = time.time()
    _gate.set()
    time.sleep(3600)


@DBOS.workflow()
def steps_wf(n: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    for i in range(n):
        plain(i)
    plain_s = time.perf_counter() - t0
    times: list[float] = []
    start = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        noop(i)
        times.append(time.perf_counter() - t0)
    total = time.perf_counter() - start
    return {"n": n, "plain": plain_s, "steps": total, "median": statistics.median(times)}


@DBOS.workflow()
def history_wf(n: int) -> int:
    _marks["body"] = time.time()  # runs again, first thing, when the workflow is recovered
    for i in range(n):
        noop(i)
    gate()
    return n


@DBOS.step()
def stamp(i: int) -> float:
    """A trivial step that returns when it ran (the throughput section's unit of work)."""
    return time.time()


@DBOS.workflow()
def load_wf(n: int) -> list[float]:
    """``n`` trivial steps; returns [body start, each step's time] for the harness's rates."""
    out = [time.time()]  # not a step: on a recovery it would run again (none here)
    for i in range(n):
        out.append(stamp(i))
    return out


QUEUE_POLL = 0.1
"""Queue polling interval (DBOS's default is 1 s: it would dominate the start latency)."""


def _queue(concurrency: int) -> Any:
    return DBOS.register_queue(
        f"bench-{concurrency}", worker_concurrency=concurrency, polling_interval_sec=QUEUE_POLL
    )


def throughput(runs: int, steps: int, concurrency: int) -> dict[str, Any]:
    """``runs`` workflows of ``steps`` steps through a queue with ``worker_concurrency``.

    Enqueued from 16 threads while the queue already runs them (DBOS has no way to hold a
    queue), so the enqueue rate can bound the workflows started per second."""
    queue = _queue(concurrency)
    return _load.run_batch(lambda: queue.enqueue(load_wf, steps), runs, lambda h: h.get_result())


def latency(rate: float, runs: int, steps: int, concurrency: int) -> dict[str, Any]:
    """Enqueue ``runs`` workflows at ``rate``/s; (enqueue time, first step time) per run."""
    queue = _queue(concurrency)
    return _load.run_paced(lambda: queue.enqueue(load_wf, steps), rate, runs,
                           lambda h: h.get_result())  # fmt: skip


def init(url: str, launch: bool = True) -> dict[str, Any]:
    config: DBOSConfig = {
        "name": "stalwart-bench",
        "system_database_url": f"{url}/dbos_bench",
        "application_version": "bench-1",
        "log_level": "WARNING",
    }
    DBOS(config=config)
    out: dict[str, Any] = {"version": version("dbos")}
    if launch:
        out.update(do_launch())
    return out


def do_launch() -> dict[str, Any]:
    t0 = time.time()
    DBOS.launch()
    return {"launch_started": t0, "launch_returned": time.time()}


def overhead(n: int) -> dict[str, Any]:
    result: dict[str, Any] = steps_wf(n)
    return result


def build(n: int, wf_id: str, timeout: float = 600.0) -> dict[str, Any]:
    """Start ``history_wf(n)`` and return once its gate step runs (n steps are recorded)."""
    with SetWorkflowID(wf_id):
        DBOS.start_workflow(history_wf, n)
    return wait_gate(timeout)


def wait_gate(timeout: float = 600.0) -> dict[str, Any]:
    if not _gate.wait(timeout):
        raise TimeoutError("the gate step never ran")
    return dict(_marks)


def cancel(wf_id: str) -> None:
    DBOS.cancel_workflow(wf_id)


def steps_recorded(wf_id: str) -> int:
    return len(DBOS.list_workflow_steps(wf_id))


def main() -> None:
    serve(
        {
            "init": init,
            "launch": do_launch,
            "overhead": overhead,
            "build": build,
            "wait_gate": wait_gate,
            "cancel": cancel,
            "steps_recorded": steps_recorded,
            "throughput": throughput,
            "latency": latency,
        }
    )


if __name__ == "__main__":
    main()
