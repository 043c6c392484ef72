"""Concurrency slots against a real Redis: limits, parking, hand-on, fairness, priority,
expiry of holders nobody renews, reservations whose request was lost."""

from __future__ import annotations

import asyncio
import shlex
from types import SimpleNamespace
from typing import TYPE_CHECKING

import msgspec
import pytest
import redis.asyncio as aioredis
from redis.exceptions import NoPermissionError

from stalwart.actors._handed import HandedRequest
from stalwart.errors import ConfigurationError, InvalidRequestError
from stalwart.flow import FlowStore, concurrency_snapshot, flow_snapshot, publish_rules
from stalwart.flow._cc_store import ConcurrencySlots
from stalwart.flow._concurrency import ConcurrencyLimit, key_tag
from stalwart.messages import decode_request
from stalwart.roles._redis import render_redis_acl

if TYPE_CHECKING:
    from stalwart import Client
    from stalwart.checkpoints import CheckpointStore


def slots(store: CheckpointStore, reserve_ttl: float = 10.0) -> ConcurrencySlots:
    return ConcurrencySlots(store.redis, store.keys.namespace, reserve_ttl=reserve_ttl)


async def take(s: ConcurrencySlots, rule: ConcurrencyLimit, key: str, rid: str, prio: int = 0):
    return await s.acquire(
        rule, key, rid, f"tok-{rid}", ttl=5.0, priority=prio, lane="", request=rid.encode()
    )


async def test_limit_parks_and_release_hands_on(store: CheckpointStore) -> None:
    s = slots(store)
    rule = ConcurrencyLimit(name="per-tenant", key="tenant", limit=2)
    assert (await take(s, rule, "a", "r1")).outcome == "ok"
    assert (await take(s, rule, "a", "r2")).outcome == "ok"
    third = await take(s, rule, "a", "r3")
    assert third.outcome == "parked" and third.position == 0
    assert (await take(s, rule, "a", "r3")).outcome == "queued"  # a duplicate keeps its place
    assert (await take(s, rule, "b", "r4")).outcome == "ok"  # another key is not held back
    # The wrong token releases nothing; the right one hands the slot to r3.
    assert await s.release(rule, "r1", "nope") == ()
    (d,) = await s.release(rule, "r1", "tok-r1")
    assert (d.run_id, d.request) == ("r3", b"r3")
    again = await take(s, rule, "a", "r3")
    assert again.outcome == "ok" and again.waited
    assert (await take(s, rule, "a", "r5")).outcome == "parked"  # r2 and r3 hold a's slots
    await publish_rules(FlowStore(store.redis, store.ns), (rule,), "app")
    # What the CLI and the console read: the limits the workers published.
    (snap,) = await concurrency_snapshot(SimpleNamespace(store=store))
    assert (snap.rule, snap.limit, snap.running, snap.waiting_keys) == ("per-tenant", 2, 3, 1)
    (flow,) = await flow_snapshot(SimpleNamespace(store=store))
    assert (flow.kind, flow.resources, flow.waiting) == ("ConcurrencyLimit", [], ["r5"])
    assert flow.used == {"running": 3, "waiting_keys": 1} and flow.limit == {"per_key": 2}
    assert {(k.key, k.running, k.waiting) for k in snap.keys} == {("a", 2, 1), ("b", 1, 0)}


async def test_priority_within_a_key_then_arrival(store: CheckpointStore) -> None:
    s = slots(store)
    rule = ConcurrencyLimit(name="one", key="agent", limit=1)
    assert (await take(s, rule, "k", "hold")).outcome == "ok"
    for rid, prio in [("p0", 0), ("p5", 5), ("p1", 1), ("p9", 9), ("p5b", 5), ("m3", -3)]:
        assert (await take(s, rule, "k", rid, prio)).outcome == "parked"
    order = []
    current = "hold"
    for _ in range(6):
        (d,) = await s.release(rule, current, f"tok-{current}")
        assert (await take(s, rule, "k", d.run_id)).outcome == "ok"
        order.append(d.run_id)
        current = d.run_id
    assert order == ["p9", "p5", "p5b", "p1", "p0", "m3"]


async def test_total_slots_go_round_robin_between_keys(store: CheckpointStore) -> None:
    s = slots(store)
    rule = ConcurrencyLimit(name="rr", key="tenant", limit=10, total=2)
    assert (await take(s, rule, "A", "a0")).outcome == "ok"
    assert (await take(s, rule, "A", "a1")).outcome == "ok"
    for i in range(2, 50):  # a burst from tenant A
        assert (await take(s, rule, "A", f"a{i}")).outcome == "parked"
    assert (await take(s, rule, "B", "b0")).outcome == "parked"
    assert (await take(s, rule, "C", "c0")).outcome == "parked"
    served = []
    holders = ["a0", "a1"]
    for _ in range(4):
        (d,) = await s.release(rule, holders[0], f"tok-{holders[0]}")
        holders = [*holders[1:], d.run_id]
        await take(s, rule, "?", d.run_id)
        served.append(d.run_id)
    # Each key with waiting runs gets a turn: B and C within one release per active key.
    assert served == ["a2", "b0", "c0", "a3"], served
    assert served.index("b0") <= 2 and served.index("c0") <= 2


async def test_priority_between_keys(store: CheckpointStore) -> None:
    s = slots(store)
    rule = ConcurrencyLimit(name="pk", key="tenant", limit=5, total=1)
    assert (await take(s, rule, "A", "x")).outcome == "ok"
    await take(s, rule, "A", "a-low", 0)
    await take(s, rule, "B", "b-high", 7)
    (d,) = await s.release(rule, "x", "tok-x")
    assert d.run_id == "b-high"


async def test_unrenewed_holders_expire_and_renewed_ones_stay(store: CheckpointStore) -> None:
    s = slots(store)
    rule = ConcurrencyLimit(name="exp", key="agent", limit=2)
    for rid in ("dead", "live"):
        await s.acquire(rule, "k", rid, f"tok-{rid}", ttl=0.3, priority=0, lane="L", request=b"x")
    assert (await take(s, rule, "k", "next")).outcome == "parked"
    for _ in range(4):
        await asyncio.sleep(0.1)
        assert await s.renew(rule.name, [("live", "tok-live"), ("ghost", "t")], 0.3) == ["ghost"]
    (d,) = await s.sweep(rule)  # "dead" was not renewed: its slot goes to "next"
    assert d.run_id == "next" and d.lane == ""
    assert await s.renew(rule.name, [("dead", "tok-dead")], 1.0) == ["dead"]
    assert (await s.snapshot(rule.name, rule.limit, rule.total)).running == 2


async def test_a_lost_reservation_is_published_again(store: CheckpointStore) -> None:
    s = slots(store, reserve_ttl=0.2)
    rule = ConcurrencyLimit(name="res", key="agent", limit=1)
    await take(s, rule, "k", "a")
    await take(s, rule, "k", "b")
    (first,) = await s.release(rule, "a", "tok-a")
    await asyncio.sleep(0.3)  # the request published for b never arrives
    (second,) = await s.sweep(rule)
    assert second.run_id == "b" and second.number != first.number
    assert (await take(s, rule, "k", "b")).waited


def test_rules_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="limit must be"):
        ConcurrencyLimit(name="x", limit=0)
    with pytest.raises(ConfigurationError, match="field path"):
        ConcurrencyLimit(name="x", key="a b")
    with pytest.raises(ConfigurationError, match="between"):
        ConcurrencyLimit(name="x", priority=5000)
    with pytest.raises(ConfigurationError, match="name"):
        ConcurrencyLimit(name="{x}")
    rule = ConcurrencyLimit(name="x", key="customer.id", agents=("billing*",))
    assert rule.applies_to("billing-v2") and not rule.applies_to("chat")
    assert rule.key_of("billing", {"customer": {"id": 42}}) == "42"
    with pytest.raises(LookupError):
        rule.key_of("billing", {"customer": {}})
    assert key_tag("acme") == "acme"
    assert key_tag("a{b}c").startswith("#") and key_tag("a{b}c") == key_tag("a{b}c")


async def test_the_scripts_run_with_the_worker_role_and_the_viewer_reads(
    store: CheckpointStore,
) -> None:
    # Scripts run with their caller's ACL: every command in them must be a worker's.
    ns = store.keys.namespace
    admin = store.redis
    for role in ("worker", "viewer"):
        line = render_redis_acl(role, ns, f"{ns}-{role}")  # type: ignore[arg-type]
        await admin.execute_command(*shlex.split(line), f">pw-{role}")
    where = admin.connection_pool.connection_kwargs
    at = {"host": where.get("host", "127.0.0.1"), "port": where.get("port", 6379)}
    try:
        worker = aioredis.Redis(**at, username=f"{ns}-worker", password="pw-worker")
        viewer = aioredis.Redis(**at, username=f"{ns}-viewer", password="pw-viewer")
        s = ConcurrencySlots(worker, ns, reserve_ttl=0.1)
        rule = ConcurrencyLimit(name="acl", key="agent", limit=1)
        assert (await take(s, rule, "k", "a")).outcome == "ok"
        assert (await take(s, rule, "k", "b")).outcome == "parked"
        assert (await take(s, rule, "k", "b")).outcome == "queued"
        assert await s.renew(rule.name, [("a", "tok-a")], 5.0) == []
        assert [d.run_id for d in await s.release(rule, "a", "tok-a")] == ["b"]
        await asyncio.sleep(0.2)
        assert [d.run_id for d in await s.sweep(rule)] == ["b"]  # the reservation lapsed
        seen = ConcurrencySlots(viewer, ns, reserve_ttl=0)
        assert (await seen.snapshot(rule.name, 1, 0)).running == 1
        with pytest.raises(NoPermissionError):  # the roles are in force
            await take(seen, rule, "k", "c")
        await worker.aclose()
        await viewer.aclose()
    finally:
        for role in ("worker", "viewer"):
            await admin.execute_command("ACL", "DELUSER", f"{ns}-{role}")


async def test_a_priority_out_of_range_is_refused_before_anything_is_stored(
    client: Client,
) -> None:
    for bad in (1001, -1001, 2.5, True):
        with pytest.raises(InvalidRequestError, match="priority must be"):
            await client.submit("any", {}, run_id=f"p-{bad!s}".replace(".", "-"), priority=bad)  # type: ignore[arg-type]
    assert await client.store.get_run("p-1001") is None
    # On the wire too: a forged request with a priority out of range does not decode.
    with pytest.raises(msgspec.ValidationError, match="priority"):
        decode_request(msgspec.msgpack.encode({"run_id": "r", "agent": "a", "priority": 10**6}))


async def test_a_handed_request_goes_to_nats_only_when_given_back() -> None:
    sent: list[str] = []

    async def to_nats() -> None:
        sent.append("published")

    placed = HandedRequest("ns.runs.a", b"req", "r:flow:x:1", to_nats)
    await placed.ack()
    await placed.nak(delay=2.0)  # after an ack: nothing to give back
    assert (placed.outcome, sent) == ("ack", [])
    busy = HandedRequest("ns.runs.a", b"req", "r:flow:x:2", to_nats)
    await busy.nak(delay=2.0)  # a busy lease or a server error: any worker may take it
    await busy.nak()
    assert (busy.outcome, sent) == ("nak", ["published"])
    assert busy.headers == {"Nats-Msg-Id": "r:flow:x:2"} and busy.metadata.num_delivered == 1
