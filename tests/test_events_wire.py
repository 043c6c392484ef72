"""Events sent as prebuilt HPUB bytes (``broker/_wire.py``) arrive exactly as nats-py's
``publish`` would have sent them: subject, reply, headers, payload, order, dedup ids."""

from __future__ import annotations

import time

import pytest
from nats.aio.client import Client as NATS

from stalwart import Client, RunEvent
from stalwart.broker._wire import hand_to_connection, hpub_command
from stalwart.messages import encode_event
from tests.helpers import eventually, rid


def _event(run_id: str, jseq: int, step: str = "step:a") -> RunEvent:
    return RunEvent(type="step.completed", run_id=run_id, at=time.time(), step=step, jseq=jseq)


def test_nats_py_internals_the_fast_path_uses_are_there() -> None:
    # hand_to_connection queues on nats-py's pending buffer; a nats-py upgrade that renames
    # these must fail here, not silently drop events.
    for name in ("_send_command", "_flush_pending", "_flush_queue", "_pending_data_size"):
        assert hasattr(NATS(), name), name
    assert "out_msgs" in NATS().stats


async def test_prebuilt_commands_arrive_like_publish(client: Client) -> None:
    nc = client.broker.nc
    run_id = rid()
    subject = f"wiretest.{run_id}"
    got: list[tuple[str, str, dict[str, str] | None, bytes]] = []

    async def on(msg: object) -> None:
        m = msg  # nats.aio.msg.Msg
        got.append((m.subject, m.reply, m.headers, m.data))  # type: ignore[attr-defined]

    sub = await nc.subscribe(subject, cb=on)
    try:
        plain, journaled = _event(run_id, 0), _event(run_id, 7)
        data0, data7 = encode_event(plain), encode_event(journaled)
        # Through nats-py, as before the fast path:
        await nc.publish(subject, data0, headers={"Stalwart-Jseq": "5"})
        await nc.publish(
            subject,
            data7,
            reply="_INBOX.x.1",
            headers={"Stalwart-Jseq": "7", "Nats-Msg-Id": f"{run_id}:j7"},
        )
        # Prebuilt, in one write:
        await hand_to_connection(
            nc,
            [
                hpub_command(subject, "", 5, plain, data0),
                hpub_command(subject, "_INBOX.x.1", 7, journaled, data7),
            ],
        )

        async def all_in() -> bool:
            return len(got) == 4

        await eventually(all_in)
        assert got[2:] == got[:2]
        assert got[1][2] == {"Stalwart-Jseq": "7", "Nats-Msg-Id": f"{run_id}:j7"}
    finally:
        await sub.unsubscribe()


def test_a_subject_of_another_shape_is_left_to_nats_py() -> None:
    ev = _event(rid(), 1)
    assert hpub_command("a b", "", 1, ev, b"{}") == b""
    assert hpub_command("a.b", "r\r\n", 1, ev, b"{}") == b""
    assert hpub_command("a.b", "", 1, _event("x y", 1), b"{}") == b""
    assert hpub_command("a.b", "", 1, ev, b"{}").startswith(b"HPUB a.b  ")


async def test_journaled_events_keep_their_dedup_ids_and_order(client: Client) -> None:
    events = client.broker.events
    run_id = rid()
    for jseq in (1, 2, 3):
        await events.publish(_event(run_id, jseq, f"step:{jseq}"))
    await events.send_queued()
    # A resumed owner republishes: the stream drops what it has by Nats-Msg-Id.
    for jseq in (2, 3, 4):
        await events.publish(_event(run_id, jseq, f"step:{jseq}"))
    await events.flush()

    async def stored() -> bool:
        steps = [e.step async for e in client.handle(run_id).events(follow=False)]
        return steps == ["step:1", "step:2", "step:3", "step:4"]

    await eventually(stored)
    assert await events.last_published_jseq(run_id) == 4


def _live(type_: str, run_id: str, step: str) -> RunEvent:
    return RunEvent(type=type_, run_id=run_id, at=time.time(), step=step)


async def _stored(client: Client, run_id: str, n: int) -> list[tuple[str, str]]:
    """The run's first ``n`` stored events as (type, step), once there are ``n``."""
    got: list[tuple[str, str]] = []

    async def enough() -> bool:
        got[:] = [(e.type, e.step) async for e in client.handle(run_id).events(follow=False)]
        return len(got) >= n

    await eventually(enough)
    return got


async def test_a_quick_steps_start_is_never_sent(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start whose step ends within START_HOLD is dropped, even across batch sends."""
    events = client.broker.events
    monkeypatch.setattr(events, "START_HOLD", 60.0)  # however slow this machine is now
    run_id = rid()
    await events.publish(_live("step.started", run_id, "step:a"))
    await events.send_queued(hold=True)  # a batch leaves while the step runs: start held
    await events.publish(_event(run_id, 1, "step:a"))
    await events.publish(_live("run.marker", run_id, ""))
    await events.flush()
    assert await _stored(client, run_id, 2) == [("step.completed", "step:a"), ("run.marker", "")]


async def test_a_later_event_of_the_run_releases_a_held_start_in_order(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token delta the step streams must not reach the stream before the step's start."""
    events = client.broker.events
    monkeypatch.setattr(events, "START_HOLD", 60.0)
    run_id, other = rid(), rid()
    await events.publish(_live("step.started", run_id, "step:a"))
    await events.publish(_live("step.started", other, "step:b"))
    await events.send_queued(hold=True)  # both held
    await events.publish(_live("model.delta", run_id, "step:a"))
    await events.send_queued(hold=True)  # the delta released step:a's start; step:b waits
    assert await _stored(client, run_id, 2) == [
        ("step.started", "step:a"),
        ("model.delta", "step:a"),
    ]
    assert [e async for e in client.handle(other).events(follow=False)] == []
    await events.publish(_event(other, 1, "step:b"))
    await events.flush()
    assert await _stored(client, other, 1) == [("step.completed", "step:b")]


async def test_a_long_steps_start_is_sent_once_held_long_enough(client: Client) -> None:
    """No other event needed: the batch timer sends a start older than START_HOLD."""
    events = client.broker.events
    run_id = rid()
    t0 = time.monotonic()
    await events.publish(_live("step.started", run_id, "step:slow"))
    assert await _stored(client, run_id, 1) == [("step.started", "step:slow")]
    assert time.monotonic() - t0 >= events.START_HOLD


async def test_flush_sends_held_starts(client: Client) -> None:
    """A drain or a run's end flushes: a held start goes out rather than being lost."""
    events = client.broker.events
    run_id = rid()
    await events.publish(_live("step.started", run_id, "step:a"))
    await events.flush()
    assert await _stored(client, run_id, 1) == [("step.started", "step:a")]


async def test_a_start_after_its_reset_is_not_held(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retry or a failover's re-run is announced with the next batch, not held back."""
    events = client.broker.events
    monkeypatch.setattr(events, "START_HOLD", 60.0)
    run_id = rid()
    await events.publish(_live("step.reset", run_id, "step:a"))
    await events.publish(_live("step.started", run_id, "step:a"))
    await events.send_queued(hold=True)  # the batch timer's send: nothing held
    assert await _stored(client, run_id, 2) == [
        ("step.reset", "step:a"),
        ("step.started", "step:a"),
    ]


async def test_queued_events_sample_acks_only_once_the_publisher_is_ready(
    client: Client,
) -> None:
    """A run's own events are queued by a plain call (``queue``): it cannot subscribe to
    acks itself, so before ``ready()`` a terminal event is sent without asking for one
    (and ``flush`` waits on nothing), and after it the terminal event's ack is awaited."""
    events = client.broker.events  # a fresh client's publisher: not subscribed to acks yet
    early, late = rid(), rid()
    events.queue(RunEvent(type="run.completed", run_id=early, at=time.time(), jseq=2))
    assert events.unacked == 0
    await events.flush()
    assert await _stored(client, early, 1) == [("run.completed", "")]
    await events.ready()
    events.queue(RunEvent(type="run.completed", run_id=late, at=time.time(), jseq=2))
    assert events.unacked == 1  # terminal events always ask
    await events.flush()  # returns once the stream acknowledged it
    assert events.unacked == 0
    assert await _stored(client, late, 1) == [("run.completed", "")]
