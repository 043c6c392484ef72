"""``RunHandle``: one submitted run, read and steered through the client's two servers."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import msgspec

from stalwart._text import ERROR_TEXT_LIMIT, clip, safe_text
from stalwart.approvals import ApprovalRequest, approval_payload, pending_approvals
from stalwart.checkpoints._codec import open_event_data, open_text
from stalwart.checkpoints._store import REJECTED_ERROR
from stalwart.client._stream import StreamPart, stream_parts
from stalwart.conversations import release_ended
from stalwart.errors import (
    ApprovalRefusedError,
    InvalidRequestError,
    RunCancelled,
    RunFailed,
    RunNotFoundError,
    RunRejected,
    SignalRefusedError,
)
from stalwart.messages import EV_REJECTED, TERMINAL_EVENTS, RunEvent, read_event
from stalwart.observability import History, build_history, replay_run

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from nats.aio.msg import Msg

    from stalwart.actors import App
    from stalwart.checkpoints import CancelOutcome, RunRecord
    from stalwart.client._client import Client
    from stalwart.config import Settings
    from stalwart.observability import ReplayReport


_RECHECK_SECONDS = 5.0


class _EndWatch:
    """What a waiter for a run's end has heard on the run's event subject.

    Events only wake the waiter; the run record decides. A rejection is the answer only
    for a run id that has no record (the request was refused before anything was stored).
    """

    def __init__(self) -> None:
        self.woken = asyncio.Event()
        self.rejected = ""

    def note(self, event: RunEvent) -> None:
        if event.type == EV_REJECTED:
            data = event.data if isinstance(event.data, dict) else {}
            self.rejected = safe_text(data.get("reason", "rejected"))
        if event.type in TERMINAL_EVENTS:
            self.woken.set()

    async def seen(self, msg: Msg) -> None:
        event = read_event(msg.data, msg.subject)
        if event is not None:  # garbage on the subject is skipped (and logged once)
            self.note(event)


class RunHandle:
    """A submitted run. Cheap to create; every method reads the servers afresh."""

    def __init__(self, client: Client, run_id: str, agent: str = "") -> None:
        self.client = client
        self.run_id = run_id
        self.agent = agent

    def __repr__(self) -> str:
        return f"RunHandle(run_id={self.run_id!r}, agent={self.agent!r})"

    async def status(self) -> RunRecord:
        """The run's record (status, epoch, owner, timestamps)."""
        record = await self.client.store.get_run(self.run_id)
        if record is None:
            raise RunNotFoundError(self.run_id)
        return record

    def events(self, *, follow: bool = True) -> AsyncIterator[RunEvent]:
        """The run's events from the first one; with ``follow``, live until the run ends.

        Messages on the run's subject that are not events are skipped. A terminal-looking
        event ends the iteration only when the run record agrees that the run has ended
        (or there is no record to ask): a stray ``request.rejected`` for a live run does not.
        Encrypted payloads in the events (results, error messages, emitted data) are
        decrypted when this process has the key, else shown as ``<encrypted: key ...>``.
        """
        events = self.client.broker.subscribe(self.run_id, follow=follow, ends=self._has_ended)
        return opened_events(events)

    def stream(self, *, follow: bool = True) -> AsyncIterator[StreamPart]:
        """The run's streamed output with resets applied (see ``docs/streaming.md``).

        Yields :class:`~stalwart.client.Chunk` (a live event emitted inside a step attempt,
        such as a ``model.delta`` with ``data["text"]``), :class:`~stalwart.client.Reset`
        (drop what was shown of a step: its attempt died), :class:`~stalwart.client.StepDone`
        (a step was journaled, with its result) and, last, :class:`~stalwart.client.StreamEnd`.
        Steps completed before the call come from the journal; chunks of a void attempt are
        dropped. Without ``follow`` it stops at the events stored now (a :class:`StreamEnd`
        only if the run has ended). Feed the parts to a :class:`~stalwart.client.StreamText`
        to get the text exactly once.
        """
        return stream_parts(self, follow=follow)

    async def _has_ended(self, event: RunEvent) -> bool:
        try:
            record = await self.client.store.get_run(self.run_id)
        except Exception:  # Redis unreachable: the event is all there is to go by
            return True
        return record is None or record.terminal

    async def result(self, timeout: float | None = None, *, type: Any = Any) -> Any:
        """Wait for the run to end and return its result (converted to ``type``).

        Raises :class:`RunFailed`, :class:`RunCancelled` or :class:`RunRejected` when the run
        did not complete, and ``TimeoutError`` when ``timeout`` passes first.
        """
        record = await self.wait(timeout)
        if record.status == "completed":
            return record.decode_result(type)
        error = open_text(record.error)  # an encrypted message, or its key's marker
        if record.status == "cancelled":
            raise RunCancelled(self.run_id, error or "cancelled")
        if record.error_type == REJECTED_ERROR:
            raise RunRejected(self.run_id, error)
        raise RunFailed(self.run_id, record.error_type, error)

    async def wait(self, timeout: float | None = None) -> RunRecord:
        """Wait for the run to end and return its record, however it ended.

        Like :meth:`result` without raising for a failed or cancelled run (``TimeoutError``
        when ``timeout`` passes first; :class:`RunRejected` for a run refused before it was
        stored).
        """
        # A plain subscription (no JetStream consumer): the terminal event only wakes us,
        # the record is the truth. Subscribed before the first look, so nothing slips by.
        watch = _EndWatch()
        sub = await self.client.broker.watch_events(self.run_id, watch.seen)
        try:
            async with asyncio.timeout(timeout):
                return await self._poll_record(watch)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _poll_record(self, watch: _EndWatch) -> RunRecord:
        first = True
        while True:
            record = await self.client.store.get_run(self.run_id)
            if record is not None and record.terminal:
                return record
            if record is None:
                if first:  # rejected before we subscribed: its event is the run's last one
                    first = False
                    last = await self.client.broker.last_event(self.run_id)
                    if last is not None:
                        watch.note(last)
                if watch.rejected:
                    raise RunRejected(self.run_id, watch.rejected)
            # Re-read the record now and then in case the terminal event was never
            # published (a NATS outage).
            try:
                async with asyncio.timeout(_RECHECK_SECONDS):
                    await watch.woken.wait()
            except TimeoutError:
                continue
            watch.woken.clear()

    async def signal(self, name: str, payload: Any = None) -> str:
        """Send signal ``name`` with ``payload`` to the run; it is never lost.

        The signal is stored before anything else happens, so it reaches a wait that
        starts later, a run whose worker just died, or a passivated run (which is placed
        again to receive it). Returns ``stored`` or ``woke``. A signal over a limit
        (``signal_name_max``, ``signal_max_bytes``, ``signal_max_pending``) raises
        :class:`~stalwart.errors.SignalRefusedError` and stores nothing.
        """
        settings = self.client.settings
        _check_signal_name(name, settings)
        # Refuses what a worker could not decode too (nesting past max_nesting).
        raw = bytes(self.client._encode_checked(payload, f"signal {name!r} payload"))
        _check_signal_size(name, raw, settings)
        outcome, sid, epoch = await self.client.store.add_signal(
            self.run_id, name, raw, max_pending=settings.signal_max_pending
        )
        if outcome == "missing":
            raise RunNotFoundError(self.run_id)
        if outcome == "terminal":
            raise InvalidRequestError(f"run {self.run_id!r} has ended; signal {name!r} not sent")
        if outcome == "full":
            raise SignalRefusedError(
                f"run {self.run_id!r} already holds {epoch} unconsumed signals "
                f"(signal_max_pending={settings.signal_max_pending}); signal {name!r} not stored"
            )
        # The record names the run's agent (for the event's subject) and, when the signal
        # wakes it, the lane it resumes in: a handle's own agent is the caller's word.
        record = await self.status()
        wake = (record.agent, epoch, record.route_lane) if outcome == "wake" else None
        await self.client.broker.signal_stored(self.run_id, name, sid, wake, agent=record.agent)
        return "woke" if outcome == "wake" else "stored"

    async def pending_approvals(self) -> list[ApprovalRequest]:
        """The run's tool calls waiting for a human's approval, oldest first.

        Read from the run's journal: each request names the call id, the tool, the hash of
        its arguments (and the arguments), the signal and ``expires_at``. Empty once the run
        has ended. See :mod:`stalwart.approvals`.
        """
        record = await self.client.store.get_run(self.run_id)
        entries = await self.client.store.read_journal(self.run_id)
        if record is None and not entries:
            raise RunNotFoundError(self.run_id)
        return pending_approvals(entries, ended=record is not None and record.terminal)

    async def approve(
        self,
        call_id: str,
        *,
        tool: str | None = None,
        args_hash: str | None = None,
        message: str | None = None,
    ) -> str:
        """Approve the pending tool call ``call_id``, bound to its tool and arguments.

        The approval carries the call id, the tool and the hash of the arguments of the
        request the run journaled, so it can only approve that call. Give ``tool`` /
        ``args_hash`` as the human saw them (from ``approval.requested`` or
        :meth:`pending_approvals`) to make sure the run still asks for the same thing.
        Raises :class:`~stalwart.errors.ApprovalRefusedError` and sends nothing when no
        request for ``call_id`` is pending (``unknown_call``), it has expired (``expired``),
        or it differs from ``tool`` / ``args_hash`` (``wrong_tool`` / ``wrong_hash``).
        Returns what :meth:`signal` returns.
        """
        return await self._answer(call_id, True, tool, args_hash, message)

    async def reject(
        self,
        call_id: str,
        message: str | None = None,
        *,
        tool: str | None = None,
        args_hash: str | None = None,
    ) -> str:
        """Reject the pending tool call ``call_id``; ``message`` goes to the model.

        Checked and bound like :meth:`approve`.
        """
        return await self._answer(call_id, False, tool, args_hash, message)

    async def _answer(
        self,
        call_id: str,
        approved: bool,
        tool: str | None,
        args_hash: str | None,
        message: str | None,
    ) -> str:
        pending = {r.call_id: r for r in await self.pending_approvals()}
        request = pending.get(call_id)
        if request is None:
            raise ApprovalRefusedError(
                f"run {self.run_id!r} has no pending approval request for call {call_id!r}"
                + (f" (pending: {', '.join(sorted(pending))})" if pending else ""),
                reason="unknown_call",
                call_id=call_id,
            )
        for field, given, want in (
            ("tool", tool, request.tool),
            ("args_hash", args_hash, request.args_hash),
        ):
            if given is not None and given != want:
                raise ApprovalRefusedError(
                    f"call {call_id!r} of run {self.run_id!r} now asks for {field} {want!r}, "
                    f"not {given!r}: read the request again before answering",
                    reason="wrong_hash" if field == "args_hash" else "wrong_tool",
                    call_id=call_id,
                )
        if request.expired():
            raise ApprovalRefusedError(
                f"the approval request for {request.tool!r} (call {call_id!r}) of run "
                f"{self.run_id!r} expired at {request.expires_at}",
                reason="expired",
                call_id=call_id,
            )
        return await self.signal(request.signal, approval_payload(request, approved, message))

    async def history(self) -> History:
        """The run's timeline from its journal (see :func:`stalwart.observability.build_history`)."""
        record = await self.client.store.get_run(self.run_id)
        entries = await self.client.store.read_journal(self.run_id)
        if record is None and not entries:
            raise RunNotFoundError(self.run_id)
        return build_history(self.run_id, entries, record)

    async def replay(self, app: App, *, timeout: float = 60.0) -> ReplayReport:
        """Run ``app``'s current code for this run against its journal, offline.

        No step body, model or tool is called; the report says whether the code still asks
        for the journaled steps with the same arguments and ends the same way (see
        :func:`stalwart.observability.replay_run`).
        """
        record = await self.status()
        entries = await self.client.store.read_journal(self.run_id)
        return await replay_run(app, record, entries, timeout=timeout, store=self.client.store)

    async def cancel(self, reason: str = "cancelled by client") -> CancelOutcome:
        """Cancel the run: at once if no worker placed it yet, else at its next step.

        Returns ``cancelled`` (ended now), ``requested`` (its owner stops at the next step
        boundary), ``terminal`` (it had already ended) or ``missing`` (unknown run id).
        """
        limit = self.client.settings.cancel_reason_max
        if not isinstance(reason, str) or len(reason) > limit:
            # Checked before anything is stored: the reason goes into the record and into
            # the run.cancelled event, which must fit one NATS message.
            raise InvalidRequestError(
                f"cancel reason must be a string of at most {limit} characters (cancel_reason_max)"
            )
        # A sender configured with a larger limit is still bounded like an error message:
        # the record keeps up to ERROR_TEXT_LIMIT, events cut it further.
        reason = clip(safe_text(reason), ERROR_TEXT_LIMIT)
        outcome, wake_epoch = await self.client.store.cancel_run(self.run_id, reason)
        if outcome == "missing":
            return outcome
        # The record names the run's agent (the event's subject) and its lane; a handle's
        # own agent is only the caller's word.
        record = await self.client.store.get_run(self.run_id)
        agent, lane = (record.agent, record.route_lane) if record is not None else ("", "")
        wake = (agent, wake_epoch, lane) if wake_epoch is not None and agent else None
        await self.client.broker.cancel_stored(
            self.run_id, reason, ended=outcome == "cancelled", agent=agent, wake=wake
        )
        if outcome == "cancelled" and record is not None and record.conversation:
            # Ended before any worker placed it: its place in the conversation goes now.
            await release_ended(self.client.store, self.client.broker, self.run_id)
        return outcome


async def opened_events(events: AsyncIterator[RunEvent]) -> AsyncIterator[RunEvent]:
    """``events`` with their encrypted payloads opened (a reader that stops early closes
    the subscription underneath too)."""
    try:
        async for event in events:
            data = open_event_data(event.data)
            yield event if data is event.data else msgspec.structs.replace(event, data=data)
    finally:
        close = getattr(events, "aclose", None)
        if close is not None:
            await close()


def _check_signal_name(name: Any, settings: Settings) -> None:
    """Refuse a signal name outside the signal limits (before the payload is encoded)."""
    if not isinstance(name, str) or not name:
        raise SignalRefusedError(f"signal name must be a non-empty string, got {type(name)!r}")
    if len(name) > settings.signal_name_max:
        raise SignalRefusedError(
            f"signal name is {len(name)} characters, over signal_name_max "
            f"({settings.signal_name_max}): {name[:40]!r}..."
        )


def _check_signal_size(name: str, raw: bytes, settings: Settings) -> None:
    """Refuse an encoded signal payload over ``signal_max_bytes``."""
    if len(raw) > settings.signal_max_bytes:
        raise SignalRefusedError(
            f"signal {name!r}: the encoded payload is {len(raw)} bytes, over signal_max_bytes "
            f"({settings.signal_max_bytes}); pass large data by reference"
        )
