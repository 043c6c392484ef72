"""Approvals bound to the action they approve: the request, the answer, and the check.

A tool call that needs a human's approval is announced as an :class:`ApprovalRequest`: the
call id, the tool's name, a hash of its canonical arguments, the signal to answer on and an
expiry. The request is journaled once (a step of kind ``approval``), so it, and its
``expires_at``, are the same on every replay. An approval is a signal payload that names what
it approves (:func:`approval_payload`)::

    {"approved": true, "call_id": "m1", "tool": "send_email", "args_hash": "sha256:...",
     "message": null}

The run checks every payload it receives with :func:`check_approval` against the call its
code is making *now*: another call id, tool or argument hash, an answer that reached the
inbox after the request expired, or a bare ``True`` is refused (not applied), published as
``approval.refused`` with the reason, and the run keeps waiting. Because the check is a pure
function of journaled data, a resumed run decides exactly as the first one did, and a run
resumed by changed code (other arguments, another tool) refuses an approval journaled for
the old call instead of applying it.

This module is pure (no servers): the run side lives in :mod:`stalwart.kit` (``await_approval``),
the client side in :meth:`stalwart.client.RunHandle.approve`, and both read requests with the
functions here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import msgspec

from stalwart.checkpoints import JournalEntry, StepDone, decode_value

__all__ = [
    "APPROVAL_KIND",
    "ApprovalRequest",
    "Verdict",
    "approval_payload",
    "check_approval",
    "pending_approvals",
    "signal_time",
]

APPROVAL_KIND = "approval"
"""The journal kind of an approval request step."""


class ApprovalRequest(msgspec.Struct, frozen=True):
    """One tool call waiting for a human's approval, as the run journaled it.

    ``expires_at`` (epoch seconds, None for never) was fixed when the request was first made
    and never moves on replay. ``arguments`` are the call's arguments as plain data, for the
    human to read; ``args_hash`` is what an approval must repeat.
    """

    call_id: str
    tool: str
    args_hash: str
    signal: str
    requested_at: float
    expires_at: float | None = None
    arguments: Any = None

    def expired(self, at: float | None = None) -> bool:
        """Whether the request has expired at ``at`` (default: now)."""
        when = time.time() if at is None else at
        return self.expires_at is not None and when >= self.expires_at

    def event(self) -> dict[str, Any]:
        """The ``approval.requested`` event's data (every field, ``expires_at`` too)."""
        return msgspec.structs.asdict(self)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the run makes of one approval payload.

    ``accepted``: the payload answers this request (``approved`` then says yes or no, with
    the ``message`` for the model on a rejection). Otherwise ``reason`` (one of
    :class:`~stalwart.errors.ApprovalRefusedError`'s reasons) and ``error`` say why it was
    refused.
    """

    accepted: bool
    approved: bool = False
    message: str | None = None
    reason: str = ""
    error: str = ""


def approval_payload(
    request: ApprovalRequest, approved: bool, message: str | None = None
) -> dict[str, Any]:
    """The signal payload that approves (or rejects) exactly ``request``'s call."""
    return {
        "approved": approved,
        "call_id": request.call_id,
        "tool": request.tool,
        "args_hash": request.args_hash,
        "message": message,
    }


def _refused(reason: str, error: str) -> Verdict:
    return Verdict(False, reason=reason, error=error)


def check_approval(
    request: ApprovalRequest,
    payload: Any,
    received_at: float | None = None,
    *,
    allow_unbound: bool = False,
) -> Verdict:
    """Check one approval ``payload`` against ``request`` (the call the code makes now).

    ``received_at`` is when the payload reached the run's inbox (see :func:`signal_time`);
    an answer that arrived at or after ``expires_at`` is refused. A bare ``True`` /
    ``False`` or an ``{"approved": ...}`` without the binding fields is *unbound*: a
    rejection is accepted (refusing never grants authority), an approval only with
    ``allow_unbound``.
    """
    how = f"signal {request.signal!r}"
    if received_at is not None and request.expired(received_at):
        return _refused(
            "expired",
            f"{how}: the answer arrived after the approval request for {request.tool!r} "
            f"(call {request.call_id!r}) expired",
        )
    approved: Any
    message: Any = None
    if isinstance(payload, bool):
        approved, bound = payload, None
    elif isinstance(payload, dict) and isinstance(payload.get("approved"), bool):
        approved, message = payload["approved"], payload.get("message")
        keys = ("call_id", "tool", "args_hash")
        bound = payload if any(k in payload for k in keys) else None
    else:
        return _refused(
            "malformed",
            f"{how} carried {type(payload).__name__}; send an approval made by "
            f"RunHandle.approve({request.call_id!r}) or reject(...)",
        )
    text = message if isinstance(message, str) else None
    if bound is None:
        if approved and not allow_unbound:
            return _refused(
                "unbound",
                f"{how}: a bare approval does not say what it approves; approve call "
                f"{request.call_id!r} with RunHandle.approve({request.call_id!r}) (or `stalwart "
                "approve`), which binds it to the tool and the hash of its arguments",
            )
        return Verdict(True, approved=approved, message=text)
    for field, want in (
        ("call_id", request.call_id),
        ("tool", request.tool),
        ("args_hash", request.args_hash),
    ):
        got = bound.get(field)
        if got != want:
            what = field.removesuffix("_id")
            return _refused(
                f"wrong_{'hash' if field == 'args_hash' else what}",
                f"{how}: the answer is for {field} {repr(got)[:80]}, but the pending call "
                f"{request.call_id!r} "
                f"has {field} {want!r}; read the pending request again "
                "(RunHandle.pending_approvals()) and approve what it shows",
            )
    return Verdict(True, approved=approved, message=text)


def signal_time(signal_id: str | None) -> float | None:
    """When a signal reached the inbox: the Redis server's clock in its stream id."""
    if not signal_id:
        return None
    try:
        return int(signal_id.split("-", 1)[0]) / 1000.0
    except ValueError:
        return None


def pending_approvals(entries: list[JournalEntry], *, ended: bool = False) -> list[ApprovalRequest]:
    """The approval requests of a run's journal that no answer has settled yet.

    Folds the journal as the run does: a request stays open until a wait for its signal
    ends with an answer :func:`check_approval` accepts, or times out; a newer request for
    the same call id (the code changed on resume) replaces it. ``ended`` (the run is over):
    none. Unbound approvals count as refused here (the run may allow them: then it settles
    the request sooner than this says).
    """
    if ended:
        return []
    open_: dict[str, ApprovalRequest] = {}
    for je in entries:
        entry = je.entry
        if not isinstance(entry, StepDone):
            continue
        if entry.kind == APPROVAL_KIND:
            try:
                request = msgspec.convert(decode_value(entry.result), ApprovalRequest)
            except msgspec.ValidationError:
                continue  # not a request this module wrote
            open_[request.call_id] = request
            continue
        if entry.kind != "signal":
            continue
        for call_id, request in list(open_.items()):
            if request.signal != entry.name:
                continue
            outcome = decode_value(entry.result)
            if not isinstance(outcome, dict) or outcome.get("timeout"):
                del open_[call_id]
            else:
                sid = outcome.get("sid")
                verdict = check_approval(
                    request,
                    outcome.get("payload"),
                    signal_time(sid if isinstance(sid, str) else None),
                )
                if verdict.accepted:
                    del open_[call_id]
    return list(open_.values())
