"""Builds and routing by build (docs/deploys.md#builds-and-routing): deploy new code while
runs of the old code are in flight, on real servers and worker processes."""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING, Any

import pytest

from stalwart import Client, RunFailed
from stalwart.actors._app import App
from stalwart.builds import (
    check_build,
    compatible,
    declare_compatible,
    derive_build,
    routing_lane,
    split_lane,
)
from stalwart.checkpoints import Started, StepDone
from stalwart.errors import ConfigurationError
from tests import deploy_v1, deploy_v2
from tests.conftest import Servers, worker_pool
from tests.helpers import eventually, journal, journaled
from tests.test_cli import cli  # noqa: F401  (the fixture)

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from stalwart.config import Settings
    from stalwart.supervisor import Supervisor

pytestmark = pytest.mark.slow

V1 = "tests.deploy_v1:app"
V2 = "tests.deploy_v2:app"


def build_of(app: App) -> str:
    return derive_build((name, spec.fn) for name, spec in app.agents.items())


B1, B2 = build_of(deploy_v1.app), build_of(deploy_v2.app)


def test_build_ids_and_lanes() -> None:
    assert B1 != B2 and B1 == build_of(deploy_v1.app)  # stable for unchanged code
    # Wrapped or opaque agent callables hash stably too (no memory address in the id).
    fn = deploy_v1.app.agents["assistant"].fn
    assert derive_build([("assistant", functools.partial(fn))]) == B1
    assert derive_build([("x", object())]) == derive_build([("x", object())])
    assert routing_lane("", "b1") == "default=b1" and routing_lane("hi", "b1") == "hi=b1"
    assert routing_lane("hi", "") == "hi"
    assert split_lane("default=b1") == ("", "b1") and split_lane("hi") == ("hi", "")
    # An id that is not a subject token (read back from a record) cannot split a subject.
    dotted = routing_lane("", "v1.2.3")
    assert dotted.startswith("default=h-") and "." not in dotted
    assert dotted == routing_lane("", "v1.2.3") != routing_lane("", "v1.2.4")
    declare_compatible("t-old", "t-new")
    assert compatible("t-old", "t-new") and compatible("", "t-x") and compatible("t-x", "t-x")
    assert not compatible("t-old", "t-other") and not compatible("t-new", "t-old")
    for bad in ("a.b", "a b", "x=y", "*", "-x", "a" * 65):
        with pytest.raises(ConfigurationError, match="invalid build"):
            check_build(bad)


async def _new_runs(client: Client, worker_ids: set[str], value: bool) -> bool:
    got = {w.worker_id: w.new_runs for w in await client.broker.workers()}
    return all(got.get(w) is value for w in worker_ids)


async def _open(counters: aioredis.Redis, *run_ids: str) -> None:
    for run_id in run_ids:
        await counters.set(deploy_v1.open_key(run_id), 1, ex=300)


def _steps(entries: list[Any]) -> list[str]:
    return [je.entry.key for je in entries if isinstance(je.entry, StepDone)]


async def test_v1_runs_finish_on_v1_after_v2_deploy_and_sigkill(
    settings: Settings,
    servers: Servers,
    client: Client,
    supervisor: Supervisor,
    counters: aioredis.Redis,
) -> None:
    async with (
        worker_pool(V1, settings, servers, client) as v1,
        worker_pool(V2, settings, servers, client) as v2,
    ):
        procs = {"v1a": await v1("v1a"), "v1b": await v1("v1b")}
        olds = [await client.submit("assistant", f"old {i}?") for i in range(6)]
        for h in olds:
            await eventually(lambda h=h: journaled(client, h.run_id, "step:render"))
        records = [await h.status() for h in olds]
        assert {r.build for r in records} == {B1}
        assert {r.route_lane for r in records} == {f"default={B1}"}

        await v2("v2a")  # the deploy: v1 workers stop taking new runs, v2 takes them
        await eventually(lambda: _new_runs(client, {"v1a", "v1b"}, False), timeout=20)
        victim = records[0].worker
        survivor = ({"v1a", "v1b"} - {victim}).pop()
        on_victim = [r.run_id for r in records if r.worker == victim]
        procs[victim].kill()  # SIGKILL, mid-run (waiting between two steps)

        news = [await client.submit("assistant", f"new {i}?") for i in range(4)]
        await _open(counters, *(h.run_id for h in olds + news))

        for h in olds:
            result = await h.result(timeout=45)
            assert result["code"] == "v1", (h.run_id, result)
            entries = await journal(client, h.run_id)
            assert _steps(entries) == ["step:render", "step:answer"]
            starts = [je.entry.worker for je in entries if isinstance(je.entry, Started)]
            if h.run_id in on_victim:
                assert starts == [victim, survivor], starts  # resumed on the other v1 worker
        for h in news:
            assert (await h.result(timeout=45))["code"] == "v2"
            assert _steps(await journal(client, h.run_id)) == [
                "step:render", "step:tools", "step:answer",
            ]  # fmt: skip
            assert (await h.status()).build == B2


async def test_runs_wait_for_their_build_then_drain_and_retire(
    settings: Settings,
    servers: Servers,
    client: Client,
    supervisor: Supervisor,
    counters: aioredis.Redis,
    cli: Any,  # noqa: F811
) -> None:
    async with (
        worker_pool(V1, settings, servers, client) as v1,
        worker_pool(V2, settings, servers, client) as v2,
    ):
        first = await v1("v1a")
        olds = [await client.submit("assistant", f"old {i}") for i in range(2)]
        for h in olds:
            await eventually(lambda h=h: journaled(client, h.run_id, "step:render"))
        await v2("v2a")
        await eventually(lambda: _new_runs(client, {"v1a"}, False), timeout=20)
        first.kill()  # no v1 worker is left
        await _open(counters, *(h.run_id for h in olds))

        # The supervisor re-places them: their resume requests wait in v1's lane.
        names = client.broker.names
        consumer = names.consumer("assistant", routing_lane("", B1))

        async def waiting() -> bool:
            info = await client.broker.js.consumer_info(names.runs_stream, consumer)
            return info.num_pending + info.num_ack_pending >= len(olds)

        await eventually(waiting, timeout=30)

        async def gone() -> bool:  # its heartbeat lives out its TTL (lease_ttl)
            # v2a listed too: an empty listing (a KV read that failed) proves nothing.
            return {w.worker_id for w in await client.broker.workers()} == {"v2a"}

        await eventually(gone, timeout=20)
        res = await cli("builds", "-o", "json")
        assert res.code == 0, res
        views = {v["build"]: v for v in json.loads(res.out)}
        assert views[B1]["in_flight"] == 2 and views[B1]["awaiting"] is True, res.out
        assert views[B1]["workers"] == [] and views[B2]["workers"] == ["v2a"]
        assert views[B2]["new_runs"] is True
        refused = await cli("builds", "retire", B1)
        assert refused.code == 2 and "2 run(s) in flight" in refused.err, refused
        runs = json.loads((await cli("runs", "-o", "json", "--agent", "assistant")).out)["runs"]
        assert {(r["placement"], r["build"]) for r in runs} == {("awaiting_worker", B1)}
        table = (await cli("runs", "--agent", "assistant")).out
        assert f"(awaiting build {B1})" in table, table
        for h in olds:  # waiting, not failed, and v2 never touched them
            record = await h.status()
            assert not record.terminal and record.build == B1
            assert "v2a" not in {
                je.entry.worker
                for je in await journal(client, h.run_id)
                if isinstance(je.entry, Started)
            }

        await v1("v1c")  # v1 comes back: it finishes them on v1 code
        for h in olds:
            assert (await h.result(timeout=45))["code"] == "v1"

        # Drain v2: new runs go to the newest active build alive, v1.
        res = await cli("builds", "drain", B2)
        assert res.code == 0, res
        await eventually(lambda: _new_runs(client, {"v2a"}, False), timeout=20)
        await eventually(lambda: _new_runs(client, {"v1c"}, True), timeout=20)
        late = await client.submit("assistant", "late")
        await _open(counters, late.run_id)
        assert (await late.result(timeout=45))["code"] == "v1"

        assert (await cli("builds", "retire", B1)).code == 0
        assert (await cli("builds", "drain", "nope")).code == 2
        res = await cli("builds", "-o", "json")
        views = {v["build"]: v for v in json.loads(res.out)}
        assert views[B1]["state"] == "retired" and views[B2]["state"] == "draining"


async def test_retire_force_moves_waiting_runs_to_the_newest_build(
    settings: Settings,
    servers: Servers,
    client: Client,
    supervisor: Supervisor,
    counters: aioredis.Redis,
    cli: Any,  # noqa: F811
) -> None:
    """The operator's override: a run of a build with no worker left is resumed by the newest
    build once its build is retired with --force (and fails there, since v2 does not replay
    v1's journal: the choice is the operator's, and it is loud, not silent)."""
    async with (
        worker_pool(V1, settings, servers, client) as v1,
        worker_pool(V2, settings, servers, client) as v2,
    ):
        first = await v1("v1a")
        old = await client.submit("assistant", "old")
        await eventually(lambda: journaled(client, old.run_id, "step:render"))
        await v2("v2a")
        first.kill()
        await _open(counters, old.run_id)
        record = await old.status()
        assert not record.terminal and record.build == B1
        res = await cli("builds", "retire", B1, "--force", "-o", "json")
        assert res.code == 0, res
        assert json.loads(res.out)[0]["moved_to"] == B2
        with pytest.raises(RunFailed) as failed:
            await old.result(timeout=45)
        assert failed.value.error_type == "NonDeterminismError"
        starts = [
            je.entry.worker
            for je in await journal(client, old.run_id)
            if isinstance(je.entry, Started)
        ]
        assert starts[-1] == "v2a"
