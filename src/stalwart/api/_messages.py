"""The control API's requests and replies: what travels on ``<ns>.api.<operation>``.

Every body is msgpack, or JSON with ``Content-Type: application/json``; a reply has the
encoding of its request. These structs are the contract: ``stalwart.contract`` generates
the AsyncAPI document's schemas from them.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

import msgspec

from stalwart.messages import ErrorData  # noqa: TC001 (msgspec reads field types at runtime)

ERROR_HEADER: Final = "Stalwart-Error"
"""Header of an error reply: its :data:`ErrorCode` (absent on every other reply)."""

ErrorCode = Literal[
    "malformed",
    "invalid",
    "unknown_operation",
    "unknown_run",
    "unknown_agent",
    "too_large",
    "refused",
    "not_finished",
    "unavailable",
    "busy",
    "internal",
]
"""Why a request failed.

``malformed``: the body is not the operation's shape, or its encoding is not supported;
``invalid``: a value is wrong (a bad run id, a run id of another agent's run, an ended run);
``unknown_operation``: no such ``<ns>.api.<operation>``; ``unknown_run``; ``unknown_agent``:
no worker serves the agent (or lane); ``too_large``: a value over a size limit
(``request_max_bytes``, the server's max_payload, ``signal_max_bytes``); ``refused``: a
limit or a rule said no (the runs stream is full, too many pending signals, an approval
that does not match); ``not_finished``: ``result`` of a run that has not ended;
``unavailable``: the server cannot reach Redis or NATS; ``busy``: too many requests in
flight on the serving process, ask again; ``internal``: a bug (the message says what).
"""


class _Wire(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of the API bodies: keyword fields, every field written (a reader in another
    language finds each one), unknown fields refused (a misspelt field is an error)."""


RunId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


class ApiError(_Wire, frozen=True, kw_only=True):
    """The body of an error reply (with header ``Stalwart-Error: <code>``)."""

    code: ErrorCode
    message: str


class SubmitRequest(_Wire, frozen=True, kw_only=True):
    """``submit``: start a run of ``agent`` (what ``Client.submit`` does).

    Submitting a ``run_id`` that is already known answers with that run and never starts a
    second one, so a client can retry a submit whose reply it did not get.
    """

    agent: str
    input: Any = None
    run_id: RunId | None = None
    lane: str = ""
    require_registered: bool = True


class SubmitReply(_Wire, frozen=True, kw_only=True):
    """The run that was started (or already existed under ``run_id``)."""

    run_id: str
    agent: str
    lane: str = ""


class CancelRequest(_Wire, frozen=True, kw_only=True):
    """``cancel``: cancel a run, at once if no worker placed it, else at its next step."""

    run_id: RunId
    reason: str = "cancelled by client"


class CancelReply(_Wire, frozen=True, kw_only=True):
    """``cancelled`` (ended now), ``requested`` (its owner stops at the next step) or
    ``terminal`` (it had already ended)."""

    run_id: str
    outcome: Literal["cancelled", "requested", "terminal"]


class SignalRequest(_Wire, frozen=True, kw_only=True):
    """``signal``: store signal ``name`` with ``payload`` in the run's inbox (never lost)."""

    run_id: RunId
    name: str
    payload: Any = None


class SignalReply(_Wire, frozen=True, kw_only=True):
    """``stored``, or ``woke`` (the run was passivated waiting for it and is placed again)."""

    run_id: str
    outcome: Literal["stored", "woke"]


class ApproveRequest(_Wire, frozen=True, kw_only=True):
    """``approve``: approve (or, ``approved: false``, reject) a pending tool call.

    ``tool`` and ``args_hash``, when given, must match what the run asks for now.
    """

    run_id: RunId
    call_id: str
    approved: bool = True
    tool: str | None = None
    args_hash: str | None = None
    message: str | None = None


class StatusRequest(_Wire, frozen=True, kw_only=True):
    """``status``: the run's record."""

    run_id: RunId


class StatusReply(_Wire, frozen=True, kw_only=True):
    """A run's record: who owns it, in which epoch, how it ended (times in epoch seconds)."""

    run_id: str
    agent: str
    status: str
    epoch: int = 0
    worker: str = ""
    lane: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0
    error_type: str = ""
    error: str = ""
    waiting_for: str = ""
    wake_at: float = 0.0
    deadline: float = 0.0
    terminal: bool = False
    conversation: str = ""
    wait_signal: str = ""
    wait_deadline: float = 0.0


class ResultRequest(_Wire, frozen=True, kw_only=True):
    """``result``: one page of an ended run's result.

    The result is encoded in the request's encoding; the reply carries the bytes
    ``[offset, offset + len(data))`` of that encoding and its ``size``. Ask again with
    ``offset`` moved on until ``offset + len(data) == size``, then decode the concatenation.
    ``max_bytes`` (0: as many as fit one message) bounds a page; ``wait`` (seconds, at most
    60) waits for the run to end first.
    """

    run_id: RunId
    offset: Annotated[int, msgspec.Meta(ge=0)] = 0
    max_bytes: Annotated[int, msgspec.Meta(ge=0)] = 0
    wait: Annotated[float, msgspec.Meta(ge=0, le=60)] = 0.0


class ResultReply(_Wire, frozen=True, kw_only=True):
    """One page of a run's result, or how the run ended without one.

    ``status`` ``completed``: ``data`` holds bytes ``offset..offset+len(data)`` of the
    encoded result (base64 in JSON), ``size`` bytes in all. ``failed`` / ``cancelled``:
    ``error`` says why, ``size`` is 0.
    """

    run_id: str
    status: str
    size: int = 0
    offset: int = 0
    data: bytes = b""
    error: ErrorData | None = None


OPERATIONS: Final[dict[str, type[_Wire]]] = {
    "submit": SubmitRequest,
    "cancel": CancelRequest,
    "signal": SignalRequest,
    "approve": ApproveRequest,
    "status": StatusRequest,
    "result": ResultRequest,
}
"""Each operation's request body."""

REPLIES: Final[dict[str, type[_Wire]]] = {
    "submit": SubmitReply,
    "cancel": CancelReply,
    "signal": SignalReply,
    "approve": SignalReply,
    "status": StatusReply,
    "result": ResultReply,
}
"""Each operation's reply body (an error reply is :class:`ApiError` instead)."""


DEFAULT_INBOX: Final = "_INBOX"
"""The reply-subject prefix NATS libraries use unless told otherwise."""


def reply_allowed(reply: str, inbox_prefix: str) -> bool:
    """Whether a reply may be sent to ``reply``: only to an inbox (``_INBOX.<...>``, the NATS
    libraries' default, or the namespace's ``<inbox_prefix>.<...>``).

    The requester chooses the reply subject, and the server lets a responder publish one
    reply there whatever its other rights (``allow_responses``). Answering anywhere else
    would let a viewer make a worker publish into the runs stream, a lease key or the
    JetStream API with the worker's rights.
    """
    for prefix in (f"{DEFAULT_INBOX}.", f"{inbox_prefix}."):
        rest = reply.removeprefix(prefix)
        if rest != reply and rest and not any(c in rest for c in " \t\r\n*>"):
            return True
    return False


def page_bounds(size: int, offset: int, room: int) -> tuple[int, int]:
    """``(start, end)`` of the page at ``offset`` of ``size`` bytes with ``room`` bytes.

    Raises ``ValueError`` for an offset past the end (the end itself is a valid, empty
    page, so a client that asks once too often learns it is done).
    """
    if offset > size:
        raise ValueError(f"offset {offset} is past the end of the result ({size} bytes)")
    return offset, min(size, offset + max(room, 1))
