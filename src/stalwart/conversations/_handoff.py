"""Hand a conversation to its next run, interrupt its running turn, repair a lost hand-off.

Waking uses the run's signal inbox (:data:`WAKE_SIGNAL`): the signal is stored in Redis
before anything else, so a run that is passivated, between workers, or not placed yet finds
it when it next looks; a run that was woken in a way that got lost (the releasing worker
died between the release and the signal) finds out at its next bounded re-check
(:func:`recover`), which is a durable wait's timeout, never an in-memory timer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from stalwart.checkpoints import encode_value

if TYPE_CHECKING:
    from stalwart.broker import Broker
    from stalwart.checkpoints import CheckpointStore

__all__ = ["WAKE_SIGNAL", "interrupt", "recover", "release", "release_ended"]

_log = structlog.get_logger("stalwart.conversations")

WAKE_SIGNAL = "stalwart.conversation"
"""The signal a run waiting for its turn waits for (sent when the hold is handed to it)."""

_MAX_SKIPS = 100
"""Ended runs skipped in one hand-off before giving the rest to the re-checks (bounds one
release when a queue is full of runs that were cancelled before they were placed)."""


async def _wake(store: CheckpointStore, broker: Broker, run_id: str, conversation: str) -> bool:
    """Signal ``run_id`` that it holds ``conversation`` now; False when it has ended (or
    never existed), so it will never take its turn."""
    payload = bytes(encode_value({"conversation": conversation}))
    outcome, sid, epoch = await store.add_signal(run_id, WAKE_SIGNAL, payload)
    if outcome in ("terminal", "missing"):
        return False
    record = await store.get_run(run_id)
    if record is None:
        return False
    wake = (record.agent, epoch, record.route_lane) if outcome == "wake" else None
    await broker.signal_stored(run_id, WAKE_SIGNAL, sid, wake, agent=record.agent)
    return True


async def release(
    store: CheckpointStore,
    broker: Broker,
    conversation: str,
    run_id: str,
    *,
    fence: int | None,
    completed: bool,
) -> str:
    """``run_id`` ended: release its hold (its items kept only if ``completed``) and wake the
    run it was handed to, skipping runs that ended while queued. Returns the run that holds
    the conversation now ("" when free)."""
    convs = store.conversations
    outcome, nxt = await convs.release(conversation, run_id, fence=fence, completed=completed)
    for _ in range(_MAX_SKIPS):
        if outcome != "handed":
            return ""
        if await _wake(store, broker, nxt, conversation):
            _log.info("conversation.handed", conversation=conversation, frm=run_id, to=nxt)
            return nxt
        # Ended while it waited (cancelled before it was placed, dead-lettered): its turn
        # is over before it began; the next one gets the conversation.
        outcome, nxt = await convs.release(conversation, nxt, fence=None, completed=False)
    return nxt if outcome == "handed" else ""


async def release_ended(store: CheckpointStore, broker: Broker, run_id: str) -> None:
    """For paths that end a run without its actor (dead letter, a cancel before placement,
    a rejection): release whatever part it had in its conversation (none: nothing)."""
    conversation, _, _ = await store.run_conversation(run_id)
    if conversation:
        await release(store, broker, conversation, run_id, fence=None, completed=False)


async def interrupt(store: CheckpointStore, broker: Broker, holder: str, by: str) -> None:
    """Cancel the running turn ``holder`` for the interrupting run ``by`` (the ordinary
    cancel path: the holder stops at its next step boundary, or at once if not placed)."""
    reason = f"interrupted by run {by!r} of the same conversation"
    outcome, wake_epoch = await store.cancel_run(holder, reason)
    if outcome == "missing":
        return
    record = await store.get_run(holder)
    agent, lane = (record.agent, record.route_lane) if record is not None else ("", "")
    wake = (agent, wake_epoch, lane) if wake_epoch is not None and agent else None
    await broker.cancel_stored(holder, reason, ended=outcome == "cancelled", agent=agent, wake=wake)
    if outcome == "cancelled":  # ended now, never placed: it releases nothing itself
        await release_ended(store, broker, holder)


async def recover(store: CheckpointStore, broker: Broker, conversation: str) -> None:
    """Repair a conversation whose hand-off got lost: held by a run that has ended (its
    worker died between ending the run and releasing), or free with a run at the head of
    its queue that has ended. Safe to call any time, from any process."""
    info = await store.conversations.info(conversation)
    if info is None:
        return
    if info.holder:
        record = await store.get_run(info.holder)
        if record is None or record.terminal:
            done = record is not None and record.status == "completed"
            _log.warning("conversation.recovered", conversation=conversation, run=info.holder)
            await release(store, broker, conversation, info.holder, fence=None, completed=done)
        return
    for head in info.queue[:_MAX_SKIPS]:
        record = await store.get_run(head)
        if record is not None and not record.terminal:
            return
        await store.conversations.drop_queued(conversation, head)
