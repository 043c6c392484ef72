"""What a worker does with a run request before (or instead of) hosting its run.

Decoding and checking a request, refusing an unusable one (and ending the run only when it
was the run's own request), skipping one whose run ended or moved on, and handing a request
back for redelivery after a server error.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

from stalwart._ids import check_run_id
from stalwart._text import clip, safe_text
from stalwart._wire import WireFormatError, decode, encoding_of
from stalwart.broker._names import msg_id_run, submit_msg_id
from stalwart.checkpoints._store import POISONED_ERROR
from stalwart.errors import InvalidRequestError
from stalwart.messages import (
    EV_FAILED,
    EV_REJECTED,
    ErrorData,
    RequestRejectedData,
    RunEndedData,
    RunEvent,
    RunRequest,
    data_dict,
)

if TYPE_CHECKING:
    import structlog
    from nats.aio.msg import Msg

    from stalwart.actors._app import AgentSpec
    from stalwart.broker import Broker
    from stalwart.checkpoints import CheckpointStore, Claim
    from stalwart.config import Settings

_PLACE_RETRY_DELAY = 1.0
"""Seconds before a request whose placement failed on a server error is first redelivered."""


def _header_run_id(msg: Msg) -> str:
    """The run id part of a request's ``Nats-Msg-Id`` (``<run_id>[:<suffix>]``), or ""."""
    try:
        return msg_id_run(str((msg.headers or {}).get("Nats-Msg-Id", "")))
    except Exception:
        return ""


class Intake:
    """The request side of a worker: decode, refuse, skip, redeliver later."""

    def __init__(
        self,
        broker: Broker,
        store: CheckpointStore,
        settings: Settings,
        worker_id: str,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self._broker = broker
        self._store = store
        self._settings = settings
        self._worker_id = worker_id
        self._log = log

    async def reject(
        self, spec: AgentSpec, msg: Msg, run_id: str | None, reason: str, *, own: bool
    ) -> None:
        """Refuse a request, and end the run it names only if it was that run's own request.

        A rejection must never be taken for the end of another run: a malformed message
        whose id names a live (or ended, or another agent's) run leaves that run alone, and
        its rejection goes to the agent's rejected subject, not the run's event stream.
        """
        reason = clip(reason, 2000)
        outcome, seq = "missing", 0
        if run_id:
            try:
                outcome, seq = await self._store.reject_request(run_id, spec.name, reason, own=own)
            except Exception as exc:  # Redis trouble: decide later, on a redelivery
                self._log.warning("request.reject_failed", run_id=run_id, error=safe_text(exc))
                await self.retry_later(msg)
                return
        self._log.warning(
            "request.rejected", agent=spec.name, run_id=run_id, reason=reason, outcome=outcome
        )
        event = RunEvent(
            type=EV_REJECTED,
            run_id=run_id or "",
            at=time.time(),
            worker=self._worker_id,
            jseq=seq,
            data=data_dict(RequestRejectedData(reason=reason, agent=spec.name)),
            agent=spec.name,
        )
        with contextlib.suppress(Exception):
            if run_id and outcome in ("missing", "rejected"):
                await self._broker.events.publish(event)
            else:
                await self._broker.events.publish_rejection(spec.name, event)
        with contextlib.suppress(Exception):
            await msg.term()

    def _read(self, msg: Msg) -> RunRequest:
        """The request in the encoding its ``Content-Type`` names (msgpack without one)."""
        return decode(
            msg.data,
            RunRequest,
            encoding_of(msg.headers),
            what="run request",
            max_nesting=self._settings.max_nesting,
        )

    def decode(self, spec: AgentSpec, msg: Msg) -> RunRequest | str:
        """The request, or the reason it is unusable. Never raises: whatever the bytes."""
        try:
            req = self._read(msg)
        except WireFormatError as exc:
            return str(exc)
        except Exception as exc:
            return f"malformed run request ({len(msg.data)} bytes): {clip(safe_text(exc), 500)}"
        try:
            check_run_id(req.run_id)
        except InvalidRequestError as exc:
            return str(exc)
        if req.agent != spec.name:
            return f"request names agent {req.agent!r} but was sent to {spec.name!r}'s subject"
        header_id = _header_run_id(msg)
        if header_id and header_id != req.run_id:
            return f"request for run {req.run_id!r} carries message id of run {header_id!r}"
        if req.kind == "start" and req.epoch:
            return f"a start request carries no epoch (got {req.epoch})"
        return req

    async def refuse(self, spec: AgentSpec, msg: Msg, reason: str) -> None:
        """Reject an undecodable or invalid request (see :meth:`reject` for whose end it is)."""
        header_id = _header_run_id(msg)
        try:
            req: RunRequest | None = self._read(msg)
        except Exception:
            req = None
        run_id = header_id or (req.run_id if req is not None else "")
        try:
            run_id = check_run_id(run_id)
        except InvalidRequestError:
            run_id = ""
        # The run's own submission is published with its bare run id as message id.
        headers = msg.headers or {}
        own = bool(run_id) and headers.get("Nats-Msg-Id") == submit_msg_id(run_id)
        own = own and (req is None or (req.kind == "start" and req.run_id == run_id))
        await self.reject(spec, msg, run_id or None, reason, own=own)

    async def not_placed(self, spec: AgentSpec, msg: Msg, req: RunRequest, claim: Claim) -> None:
        """The claim refused the placement: skip, refuse or (poisoned) announce the failure."""
        if claim.outcome == "wrong_agent":
            reason = (
                f"run {req.run_id!r} belongs to agent {claim.status!r}; a request for it on "
                f"{spec.name!r}'s subject is refused"
            )
            await self.reject(spec, msg, req.run_id, reason, own=False)
            return
        if claim.outcome == "missing":
            reason = f"resume request for run {req.run_id!r}, which does not exist"
            await self.reject(spec, msg, req.run_id, reason, own=False)
            return
        await msg.ack()
        if claim.outcome == "poisoned":
            self._log.error("run.poisoned", run_id=req.run_id, reason=claim.status)
            with contextlib.suppress(Exception):
                await self._broker.events.publish(
                    RunEvent(
                        type=EV_FAILED,
                        run_id=req.run_id,
                        at=claim.at,
                        worker=self._worker_id,
                        jseq=claim.seq,
                        agent=spec.name,
                        data=data_dict(
                            RunEndedData(error=ErrorData(type=POISONED_ERROR, message=claim.status))
                        ),
                    )
                )
            return
        # Ended already (a duplicate submit after completion) or a newer owner exists.
        self._log.info("request.skipped", run_id=req.run_id, outcome=claim.outcome)

    async def retry_later(self, msg: Msg) -> None:
        """A placement failed half way (a server error): have the request redelivered soon.

        The delay doubles with every delivery up to ``ack_wait``, so an outage does not use
        up ``max_deliver`` (and dead-letter the run) faster than unacked deliveries would.
        """
        try:
            delivered = msg.metadata.num_delivered or 1
        except Exception:  # not a JetStream message: nothing to count
            delivered = 1
        delay = min(_PLACE_RETRY_DELAY * 2 ** (delivered - 1), self._settings.ack_wait)
        with contextlib.suppress(Exception):
            await msg.nak(delay=delay)

    async def lease_busy(self, req: RunRequest, msg: Msg) -> None:
        """Someone else holds the lease: drop the request if they own the run, else retry later."""
        record = await self._store.get_run(req.run_id)
        if record is not None and (record.terminal or record.epoch > req.epoch):
            await msg.ack()
            return
        # The holder has not claimed yet (or is releasing): ask again after a lease TTL,
        # by which time the lease is either claimed or expired.
        await msg.nak(delay=float(self._settings.lease_ttl))
