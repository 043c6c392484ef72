"""``run_detail``: one run as an operator reads it: its record, a timeline of its steps, its
epochs (who owned it, where a failover happened and how long the run had no owner), its
waits and pending signals, its approvals and its result."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from stalwart._ids import check_run_id
from stalwart.approvals import ApprovalRequest, pending_approvals
from stalwart.checkpoints import JournalEntry, StepDone, StepError, WaitStarted
from stalwart.checkpoints._codec import describe_sealed, open_text
from stalwart.checkpoints._runs import describe_epoch
from stalwart.errors import PayloadKeyError, RunNotFoundError
from stalwart.messages import EV_PASSIVATED, EV_RELEASED
from stalwart.observability import AttemptError, History, build_history
from stalwart.operations._owners import lease_holders
from stalwart.operations._runs import RunSummary, summary

if TYPE_CHECKING:
    from stalwart.checkpoints import RunRecord
    from stalwart.client import Client

EVENTS_READ = 5000
"""Most of a run's stored events read to tell hand-overs and wake-ups from failovers."""
EVENTS_TIMEOUT = 5.0
"""Seconds that read may take; past it, epochs are told apart from the journal alone."""

EpochCause = Literal["first", "fork", "wake", "handover", "failover"]


class TimelineStep(msgspec.Struct, kw_only=True):
    """One step of the timeline. Times are epoch seconds (``ended_at`` 0: not ended)."""

    seq: int
    key: str
    kind: str
    name: str
    outcome: str
    """``completed``, ``failed``, ``retrying``, ``unknown`` (an at-most-once call started
    and never reported) or ``waiting``."""
    started_at: float
    """When its last attempt started."""
    ended_at: float
    duration: float
    attempts: int
    worker: str
    epoch: int
    error: str = ""
    errors: list[AttemptError] = []
    """Failed attempts before the last one."""
    model: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


class EpochView(msgspec.Struct, kw_only=True):
    """One placement of the run: the worker that owned it under ``epoch``.

    ``cause`` says how the run got to this owner: its ``first`` placement, a ``fork``
    marker, a ``wake`` (it had passivated in a wait), a ``handover`` (the previous worker
    drained and released it) or a ``failover`` (the previous owner was lost: it died or
    lost its lease, and the run was re-placed). ``gap`` is the time the run had no owner:
    from the previous owner's last journaled entry to this placement.
    """

    epoch: int
    epoch_text: str
    worker: str
    started_at: float
    seq: int
    cause: EpochCause
    previous_worker: str = ""
    gap: float = 0.0
    last_activity_at: float = 0.0
    """The time of this owner's last journaled entry."""


class WaitView(msgspec.Struct, kw_only=True):
    """A durable wait: for ``signal``, or a sleep (``signal`` "")."""

    key: str
    signal: str
    started_at: float
    deadline: float
    """When it gives up (a sleep: when it ends); 0 for never."""
    resolved_at: float
    """When its outcome was journaled; 0 while it waits."""
    epoch: int


class SignalView(msgspec.Struct, kw_only=True):
    """A signal sent to the run and not consumed yet."""

    id: str
    name: str
    sent_at: float
    payload_bytes: int


class ConversationView(msgspec.Struct, kw_only=True):
    """The conversation a run is a turn of, as it stands now (docs/conversations.md)."""

    id: str
    holder: str
    """The run holding it now ("" when free)."""
    turns: int
    """Completed turns."""
    items: int
    queue: list[str]
    """Runs waiting for their turn, next first."""


async def conversation_view(client: Client, conversation: str) -> ConversationView | None:
    """Conversation ``conversation`` now (None for "" or one never used)."""
    if not conversation:
        return None
    info = await client.store.conversations.info(conversation)
    if info is None:
        return ConversationView(id=conversation, holder="", turns=0, items=0, queue=[])
    return ConversationView(
        id=conversation,
        holder=info.holder,
        turns=info.turns,
        items=info.items,
        queue=info.queue,
    )


class RunDetail(msgspec.Struct, kw_only=True):
    """Everything :func:`run_detail` knows about one run."""

    run: RunSummary
    error: str
    """The whole error message ("" for none)."""
    deadline: float
    wake_at: float
    waiting_for: str
    cancel_requested: str
    """A cancellation reason not yet acted on ("" for none)."""
    steps: list[TimelineStep]
    epochs: list[EpochView]
    waits: list[WaitView]
    signals: list[SignalView]
    approvals: list[ApprovalRequest]
    result: Any = None
    """The decoded result (None until it completes, or when it is not shown)."""
    result_bytes: int = 0
    result_note: str = ""
    """Why ``result`` is not the result: an encrypted one names its key, an oversized one
    its size; "" otherwise."""
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    retries: int = 0
    finished_at: float = 0.0
    queued_for: str = ""
    """What a run not placed yet waits for (``concurrency <rule> key <key>``; "" for none)."""
    wait_signal: str = ""
    """The signal of the durable wait the run is in ("": none, or a sleep)."""
    wait_deadline: float = 0.0
    """When that wait gives up (a sleep: ends); 0 for no wait or no timeout."""
    conversation: ConversationView | None = None
    """The conversation the run is a turn of (None: none)."""


async def run_detail(
    client: Client, run_id: str, *, max_result_bytes: int | None = None
) -> RunDetail:
    """Run ``run_id`` as an operator reads it (raises :class:`RunNotFoundError`).

    ``max_result_bytes`` leaves a larger encoded result out (``result_note`` says how
    large it is); None shows every result, however large. An encrypted result this
    process has no key for is described, not decoded.
    """
    run_id = check_run_id(run_id)
    store = client.store
    record = await store.get_run(run_id)
    if record is None:
        raise RunNotFoundError(run_id)
    entries = await store.read_journal(run_id)
    signals = await store.read_signals(run_id)
    owner = (
        (await lease_holders(client.broker, [run_id])).get(run_id, "")
        if not record.terminal
        else ""
    )
    history = build_history(run_id, entries, record)
    # Only a re-placement needs telling apart (hand-over, wake, failover): reading the
    # events costs one request per event, so a run placed once skips it.
    replaced = sum(not p.worker.startswith("fork:") for p in history.placements) > 1
    causes = await _event_causes(client, run_id) if replaced else {}
    result, size, note = _result(record, max_result_bytes)
    return RunDetail(
        run=summary(record, owner, len(entries), time.time()),
        error=open_text(record.error),
        deadline=record.deadline,
        wake_at=record.wake_at,
        waiting_for=record.waiting_for,
        cancel_requested=record.cancel,
        steps=timeline(history),
        epochs=epochs(history, entries, causes),
        waits=waits(entries),
        signals=[
            SignalView(id=sid, name=name, sent_at=_stream_time(sid), payload_bytes=len(payload))
            for sid, name, payload in signals
        ],
        approvals=pending_approvals(entries, ended=record.terminal),
        result=result,
        result_bytes=size,
        result_note=note,
        input_tokens=history.input_tokens,
        output_tokens=history.output_tokens,
        cost_usd=history.cost_usd,
        retries=history.retries,
        finished_at=history.finished_at,
        queued_for=record.queued_for,
        wait_signal=record.wait_signal,
        wait_deadline=record.wait_deadline,
        conversation=await conversation_view(client, record.conversation),
    )


def _result(record: RunRecord, limit: int | None) -> tuple[Any, int, str]:
    raw = bytes(record.result) if record.result is not None else b""
    if not raw:
        return None, 0, ""
    if limit is not None and len(raw) > limit:
        return None, len(raw), f"<result of {len(raw)} bytes, over the {limit} shown>"
    try:
        return record.decode_result(), len(raw), ""
    except PayloadKeyError:
        return None, len(raw), describe_sealed(record.result)


def _stream_time(sid: str) -> float:
    ms, _, _ = sid.partition("-")
    return int(ms) / 1000 if ms.isdigit() else 0.0


def timeline(history: History) -> list[TimelineStep]:
    """The steps of ``history`` with start and end times. Pure."""
    out: list[TimelineStep] = []
    for s in history.steps:
        ended = s.outcome in ("completed", "failed")
        out.append(
            TimelineStep(
                seq=s.seq,
                key=s.key,
                kind=s.kind,
                name=s.name,
                outcome=s.outcome,
                started_at=s.at,
                ended_at=s.at + s.duration if ended else 0.0,
                duration=s.duration,
                attempts=s.attempts,
                worker=s.worker,
                epoch=s.epoch,
                error=s.error,
                errors=list(s.errors),
                model=s.model,
                input_tokens=s.input_tokens,
                output_tokens=s.output_tokens,
                cost_usd=s.cost_usd,
            )
        )
    return out


async def _event_causes(client: Client, run_id: str) -> dict[int, EpochCause]:
    """``{epoch: cause}`` for epochs that ended by a hand-over or a passivation, from the
    run's stored events (best effort: events may have aged out of the stream)."""
    causes: dict[int, EpochCause] = {}

    async def read() -> None:
        seen = 0
        async for event in client.broker.subscribe(run_id, follow=False):
            seen += 1
            if event.type == EV_RELEASED and event.epoch:
                causes[event.epoch] = "handover"
            elif event.type == EV_PASSIVATED and event.epoch:
                causes[event.epoch] = "wake"
            if seen >= EVENTS_READ:
                return

    with contextlib.suppress(Exception):
        await asyncio.wait_for(read(), EVENTS_TIMEOUT)
    return causes


def epochs(
    history: History, entries: list[JournalEntry], ended_by: dict[int, EpochCause]
) -> list[EpochView]:
    """The run's placements with how each came about. Pure.

    ``ended_by`` maps an epoch to how it was given up when its events say so (``handover``
    or ``wake``); any other re-placement is a ``failover``, except that one whose owner's
    last entry was a wait is read as a ``wake`` when no event says otherwise.
    """
    last_at: dict[int, float] = {}
    last_entry: dict[int, object] = {}
    for je in entries:
        e = je.entry
        epoch = getattr(e, "epoch", 0)
        end = e.at + getattr(e, "duration", 0.0)  # a step's ``at`` is when it started
        last_at[epoch] = max(last_at.get(epoch, 0.0), end)
        last_entry[epoch] = e
    out: list[EpochView] = []
    for p in history.placements:
        if p.worker.startswith("fork:"):
            cause: EpochCause = "fork"
        elif not out or out[-1].cause == "fork":
            cause = "first"
        else:
            prev = out[-1].epoch
            guess: EpochCause = (
                "wake" if isinstance(last_entry.get(prev), WaitStarted) else "failover"
            )
            cause = ended_by.get(prev, guess)
        view = EpochView(
            epoch=p.epoch,
            epoch_text=describe_epoch(p.epoch),
            worker=p.worker,
            started_at=p.at,
            seq=p.seq,
            cause=cause,
            last_activity_at=last_at.get(p.epoch, p.at),
        )
        if out and cause not in ("fork", "first"):
            prev_view = out[-1]
            view.previous_worker = prev_view.worker
            view.gap = max(p.at - prev_view.last_activity_at, 0.0)
        out.append(view)
    return out


def waits(entries: list[JournalEntry]) -> list[WaitView]:
    """The run's durable waits, oldest first, with when each was resolved. Pure."""
    resolved: dict[str, float] = {}
    for je in entries:
        if isinstance(je.entry, StepDone | StepError):
            resolved[je.entry.key] = je.entry.at + je.entry.duration
    out: dict[str, WaitView] = {}
    for je in entries:
        e = je.entry
        if isinstance(e, WaitStarted) and e.key not in out:
            out[e.key] = WaitView(
                key=e.key,
                signal=e.signal,
                started_at=e.at,
                deadline=e.until,
                resolved_at=resolved.get(e.key, 0.0),
                epoch=e.epoch,
            )
    return list(out.values())
