"""The run's side of approvals bound to the action: one request, checked answers, an expiry.

Every adapter's tool-approval path calls :func:`await_approval` with the call the code is
making now; see :mod:`stalwart.approvals` for the request, the payload and the check.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from stalwart.actors import StepSpec, WaitTimeout
from stalwart.approvals import APPROVAL_KIND, ApprovalRequest, check_approval, signal_time
from stalwart.errors import ConfigurationError
from stalwart.kit._keys import canonical_fp, canonical_json

if TYPE_CHECKING:
    from stalwart.actors import RunContext

OnExpiry = Literal["reject", "fail"]


def args_hash(arguments: Any) -> str:
    """``sha256:<hex>`` of the canonical JSON of a tool call's arguments.

    A JSON text (how models send arguments) is parsed first, so whitespace and key order do
    not change the hash; anything else is hashed as plain data.
    """
    if isinstance(arguments, str | bytes):
        try:
            arguments = json.loads(arguments or "null")
        except ValueError:
            pass  # not JSON: the text itself is the argument
    digest = hashlib.sha256(canonical_json(arguments).encode()).hexdigest()
    return f"sha256:{digest}"


@dataclass(frozen=True, slots=True)
class ApprovalPolicy:
    """How a runner treats tool approvals.

    ``ttl``: seconds a request stays open (None: until answered); it is fixed in the journaled
    request as ``expires_at``. ``on_expiry``: ``"reject"`` (default: the call is rejected
    and the model is told the approval expired, so the agent can say so) or ``"fail"`` (the
    run fails with ``WaitTimeout``). ``allow_unbound``: accept a bare ``True`` (or an
    ``{"approved": true}`` that names no call), as before approvals were bound; off by
    default, because such an answer approves whatever call is pending, even one the code
    changed after a deploy.
    """

    ttl: float | None = None
    on_expiry: OnExpiry = "reject"
    allow_unbound: bool = False

    def __post_init__(self) -> None:
        if self.ttl is not None and self.ttl <= 0:
            raise ConfigurationError(f"approval ttl must be positive seconds, got {self.ttl}")
        if self.on_expiry not in ("reject", "fail"):
            raise ConfigurationError(
                f"on_expiry must be 'reject' or 'fail', got {self.on_expiry!r}"
            )


@dataclass(frozen=True, slots=True)
class ApprovalDecision:
    """How one approval request ended: ``approved``, or not with a ``message`` for the model
    (``expired`` when nobody answered in time)."""

    approved: bool
    message: str | None = None
    expired: bool = False


async def await_approval(
    ctx: RunContext,
    *,
    call_id: str,
    tool: str,
    arguments: Any,
    policy: ApprovalPolicy,
    signal: str | None = None,
) -> ApprovalDecision:
    """Ask for a human's approval of one tool call, durably, and return the decision.

    :func:`request_approval`, then :func:`decide_approval`. (Code with several calls to
    approve at once requests them all first, so the human sees every pending request.)
    """
    request = await request_approval(
        ctx, call_id=call_id, tool=tool, arguments=arguments, policy=policy, signal=signal
    )
    return await decide_approval(ctx, request, policy)


async def request_approval(
    ctx: RunContext,
    *,
    call_id: str,
    tool: str,
    arguments: Any,
    policy: ApprovalPolicy,
    signal: str | None = None,
) -> ApprovalRequest:
    """Journal and announce the approval request of one tool call (``approval.requested``).

    The request (``call_id``, ``tool``, the hash of ``arguments``, ``expires_at``) is a
    journaled step, so it is the same on every replay. On replay it is compared with the call
    the code makes now: if the tool or the arguments changed, it is refused
    (``approval.refused``, reason ``changed``) and a new request is made, so an approval given
    for the old call is never applied to the new one. ``signal`` defaults to
    ``approval:<call_id>``.
    """
    signal = signal or f"approval:{call_id}"
    digest = args_hash(arguments)
    request = await _request(ctx, call_id, tool, arguments, digest, signal, policy)
    if request.tool != tool or request.args_hash != digest:
        await ctx.emit(
            "approval.refused",
            {
                "call_id": call_id,
                "signal": signal,
                "reason": "changed",
                "error": (
                    f"the journaled approval request was for {request.tool!r} with "
                    f"{request.args_hash}; the code now calls {tool!r} with {digest}: "
                    "asking again"
                ),
            },
            always=True,
        )
        request = await _request(ctx, call_id, tool, arguments, digest, signal, policy)
    await ctx.emit("approval.requested", request.event())
    return request


async def decide_approval(
    ctx: RunContext, request: ApprovalRequest, policy: ApprovalPolicy
) -> ApprovalDecision:
    """Wait durably for an answer to ``request`` that passes the check, and return it.

    Every answer on the request's signal is checked (:func:`~stalwart.approvals.check_approval`);
    a refused one is published as ``approval.refused`` and the wait goes on until
    ``expires_at``, when the policy's ``on_expiry`` decides.
    """
    while True:
        try:
            got = await ctx.receive_signal(request.signal, timeout=_remaining(request))
        except WaitTimeout:
            return await _expired(ctx, request, policy)
        verdict = check_approval(
            request, got.payload, signal_time(got.id), allow_unbound=policy.allow_unbound
        )
        if verdict.accepted:
            await ctx.emit(
                "approval.approved" if verdict.approved else "approval.rejected",
                {"call_id": request.call_id, "tool": request.tool, "args_hash": request.args_hash},
            )
            return ApprovalDecision(verdict.approved, verdict.message)
        await ctx.emit(
            "approval.refused",
            {
                "call_id": request.call_id,
                "signal": request.signal,
                "reason": verdict.reason,
                "error": verdict.error,
            },
        )


async def _request(
    ctx: RunContext,
    call_id: str,
    tool: str,
    arguments: Any,
    digest: str,
    signal: str,
    policy: ApprovalPolicy,
) -> ApprovalRequest:
    async def make() -> dict[str, Any]:
        now = time.time()
        return msgspec.structs.asdict(
            ApprovalRequest(
                call_id=call_id,
                tool=tool,
                args_hash=digest,
                signal=signal,
                requested_at=now,
                expires_at=None if policy.ttl is None else now + policy.ttl,
                arguments=_plain(arguments),
            )
        )

    # The fingerprint names the call only: a changed tool or argument hash on replay is
    # the re-check's business (refused, asked again), not a NonDeterminismError.
    spec = StepSpec(
        key=ctx.next_key(f"{APPROVAL_KIND}:{call_id}"),
        kind=APPROVAL_KIND,
        name=tool,
        fp=canonical_fp(APPROVAL_KIND, call_id),
    )
    return msgspec.convert(await ctx.call(spec, make), ApprovalRequest)


def _plain(arguments: Any) -> Any:
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return json.loads(canonical_json(arguments))


def _remaining(request: ApprovalRequest) -> float | None:
    # Used only when the wait starts live; a resumed wait keeps its journaled deadline.
    if request.expires_at is None:
        return None
    return max(request.expires_at - time.time(), 0.001)


async def _expired(
    ctx: RunContext, request: ApprovalRequest, policy: ApprovalPolicy
) -> ApprovalDecision:
    await ctx.emit(
        "approval.expired",
        {"call_id": request.call_id, "tool": request.tool, "expires_at": request.expires_at},
    )
    if policy.on_expiry == "fail":
        raise WaitTimeout(
            f"approval of {request.tool!r} (call {request.call_id!r}) expired: nobody "
            f"answered on {request.signal!r} before {request.expires_at}"
        )
    return ApprovalDecision(
        False,
        f"Not run: the approval request for {request.tool!r} expired before anyone approved it.",
        expired=True,
    )
