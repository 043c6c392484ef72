"""The operations read model (stalwart.operations) on real servers: filters, paging that
holds under inserts, bounded scans, owners from the lease bucket, failover epochs."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
import pytest

from stalwart import operations
from stalwart.errors import InvalidRequestError, RunNotFoundError
from stalwart.operations import RunQuery, list_runs, run_detail
from tests.helpers import eventually, journaled, open_gate, rid

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from stalwart import Client
    from stalwart.operations import RunSummary
    from tests.conftest import WorkerFactory


async def _all_pages(client: Client, query: RunQuery) -> list[RunSummary]:
    out: list[RunSummary] = []
    cursor = query.cursor
    for _ in range(100):
        page = await list_runs(client, msgspec.structs.replace(query, cursor=cursor))
        out.extend(page.runs)
        cursor = page.next_cursor
        if cursor is None:
            return out
    raise AssertionError("paging did not end")


async def test_filters_paging_and_bounded_scans(client: Client) -> None:
    ids = [f"r{i}-{rid()[:6]}" for i in range(6)]
    for i, run_id in enumerate(ids):
        await client.submit("x" if i < 4 else "y", i, run_id=run_id, require_registered=False)
    assert await client.handle(ids[1]).cancel("no longer wanted") == "cancelled"
    newest_first = list(reversed(ids))

    page = await list_runs(client, RunQuery(limit=100))
    assert [r.run_id for r in page.runs] == newest_first
    assert page.next_cursor is None and page.scanned == 6
    by_id = {r.run_id: r for r in page.runs}
    assert by_id[ids[0]].status == "accepted" and by_id[ids[0]].placement == "queued"
    assert by_id[ids[0]].owner == "" and by_id[ids[0]].journal_entries == 0
    cancelled = by_id[ids[1]]
    assert (cancelled.status, cancelled.placement) == ("cancelled", "ended")
    assert cancelled.error == "no longer wanted" and cancelled.ended_at >= cancelled.created_at
    # Encodes to JSON as it is (the console serves it directly).
    assert msgspec.json.decode(msgspec.json.encode(page))["runs"][0]["run_id"] == ids[-1]

    only = await list_runs(client, RunQuery(status=["cancelled"]))
    assert [r.run_id for r in only.runs] == [ids[1]]
    ys = await list_runs(client, RunQuery(agent="y"))
    assert [r.run_id for r in ys.runs] == [ids[5], ids[4]]
    both = await list_runs(client, RunQuery(agent="x", status=["accepted", "cancelled"]))
    assert [r.run_id for r in both.runs] == [ids[3], ids[2], ids[1], ids[0]]
    found = await list_runs(client, RunQuery(search=ids[2][-6:]))
    assert [r.run_id for r in found.runs] == [ids[2]]
    third = by_id[ids[3]].created_at
    assert [r.run_id for r in (await list_runs(client, RunQuery(since=third))).runs] == [
        ids[5], ids[4], ids[3]
    ]  # fmt: skip
    assert [r.run_id for r in (await list_runs(client, RunQuery(until=third))).runs] == [
        ids[3], ids[2], ids[1], ids[0]
    ]  # fmt: skip

    # Pages of two, a new run submitted between pages: no duplicate, no gap, and the new
    # run (newer than the cursor) does not show up in the later pages.
    first = await list_runs(client, RunQuery(limit=2))
    assert [r.run_id for r in first.runs] == newest_first[:2] and first.next_cursor
    await client.submit("x", 99, run_id="late-" + rid()[:6], require_registered=False)
    rest = await _all_pages(client, RunQuery(limit=2, cursor=first.next_cursor))
    assert [r.run_id for r in rest] == newest_first[2:]

    # A filter that matches nothing reads at most max_scan entries per call, and says
    # where to go on; following the cursor ends.
    none = await list_runs(client, RunQuery(agent="nope", limit=1, max_scan=3))
    assert none.runs == [] and none.scanned == 3 and none.next_cursor is not None
    assert await _all_pages(client, RunQuery(agent="nope", limit=1, max_scan=3)) == []


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (RunQuery(cursor="garbage!"), "invalid cursor"),
        (RunQuery(cursor="MS41fA"), "invalid cursor"),  # "1.5|": no run id
        (RunQuery(status=["runing"]), "unknown run status 'runing'"),
        (RunQuery(placement=["stuck"]), "unknown placement 'stuck'"),
        (RunQuery(limit=0), "limit must be"),
        (RunQuery(limit=10, max_scan=5), "max_scan must be between limit"),
        (RunQuery(max_scan=10**9), "max_scan must be between limit"),
        (RunQuery(since=10.0, until=5.0), "since .* is after until"),
        (RunQuery(until=float("nan")), "until must be epoch seconds"),
    ],
)
async def test_bad_queries_are_refused_clearly(
    client: Client, query: RunQuery, message: str
) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        await list_runs(client, query)


async def test_owner_failover_epochs_and_fleet(
    client: Client, workers: WorkerFactory, supervisor: object, counters: aioredis.Redis
) -> None:
    a = await workers("a")
    run_id = rid()
    handle = await client.submit("ten", {"pause_after": 5}, run_id=run_id)
    await eventually(lambda: journaled(client, run_id, "step:s5"))
    (running,) = (await list_runs(client, RunQuery(search=run_id))).runs
    assert (running.status, running.placement, running.owner) == ("running", "owned", "a")

    async def hosting() -> operations.WorkerView | None:
        (w,) = await operations.workers(client)
        return w if w.active == 1 else None  # heartbeats go out every lease TTL / 3

    wa = await eventually(hosting, timeout=10, message="a's heartbeat never showed its run")
    assert wa.worker_id == "a" and wa.free == wa.capacity - 1 and wa.heartbeat_age < 5

    a.kill()  # SIGKILL: the record still names a, the lease expires within its TTL

    async def orphaned() -> RunSummary | None:
        (r,) = (await list_runs(client, RunQuery(search=run_id))).runs
        return r if r.placement == "awaiting_worker" else None

    shown = await eventually(orphaned, timeout=15, message="the dead owner was still shown")
    assert (shown.status, shown.owner, shown.worker) == ("running", "", "a")
    stuck = await list_runs(client, RunQuery(placement=["awaiting_worker"]))
    assert [r.run_id for r in stuck.runs] == [run_id]
    assert (await list_runs(client, RunQuery(placement=["owned", "queued"]))).runs == []

    await open_gate(counters, run_id, "after")
    await workers("b")
    assert await handle.result(timeout=30) == sum(i * 10 for i in range(1, 11))

    detail = await run_detail(client, run_id)
    assert detail.run.status == "completed" and detail.run.placement == "ended"
    assert detail.result == 550 and detail.result_bytes > 0 and detail.result_note == ""
    assert [s.key for s in detail.steps] == [f"step:s{i}" for i in range(1, 11)]
    assert all(s.outcome == "completed" and s.ended_at >= s.started_at for s in detail.steps)
    assert [s.worker for s in detail.steps] == ["a"] * 5 + ["b"] * 5
    first, second = detail.epochs
    assert (first.worker, first.cause) == ("a", "first")
    assert (second.worker, second.cause, second.previous_worker) == ("b", "failover", "a")
    assert second.epoch > first.epoch
    # The run had no owner from a's last entry until b took it: at least the lease TTL
    # (a's lease had to expire), and it is measured from the journal.
    assert second.gap >= 1.0, second
    assert second.started_at - second.gap == pytest.approx(first.last_activity_at)
    msgspec.json.encode(detail)

    async def served_by_b() -> operations.AgentView | None:
        views = {(v.agent, v.lane): v for v in await operations.agents(client)}
        ten = views[("ten", "")]
        return ten if ten.workers == ["b"] else None  # a's heartbeat expires within its TTL

    ten = await eventually(served_by_b, timeout=10, message="a's heartbeat did not expire")
    assert ten.consumer == "agent_ten"
    assert ten.completed == 1 and ten.in_flight == {} and ten.throughput > 0
    assert ten.pending == 0


async def test_detail_of_waits_signals_and_results(client: Client, workers: WorkerFactory) -> None:
    await workers("w")
    handle = await client.submit("approval", 7)

    async def waiting() -> operations.RunDetail | None:
        d = await run_detail(client, handle.run_id)
        return d if d.waits else None

    detail = await eventually(waiting, timeout=15, message="the run never waited")
    (wait,) = detail.waits
    assert (wait.signal, wait.resolved_at, wait.deadline) == ("approve", 0.0, 0.0)
    assert detail.run.status in ("running", "waiting") and detail.result is None
    assert await handle.signal("other", {"x": 1}) in ("stored", "woke")
    (pending,) = (await run_detail(client, handle.run_id)).signals
    assert pending.name == "other" and pending.payload_bytes > 0 and pending.sent_at > 0

    await handle.signal("approve", "yes")
    assert (await handle.result(timeout=20))["decision"] == "yes"
    done = await run_detail(client, handle.run_id)
    assert done.result == {"quote": 7, "decision": "yes"} and done.result_note == ""
    assert done.waits[0].resolved_at >= done.waits[0].started_at > 0
    assert [e.cause for e in done.epochs] == ["first"]  # placed once (passivate_after: 60 s)
    clipped = await run_detail(client, handle.run_id, max_result_bytes=4)
    assert clipped.result is None and f"{clipped.result_bytes} bytes" in clipped.result_note
    with pytest.raises(RunNotFoundError):
        await run_detail(client, "never-submitted")
