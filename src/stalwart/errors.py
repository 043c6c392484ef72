"""Exceptions raised by Stalwart.

One root, :class:`StalwartError`. Misuse (:class:`ConfigurationError`, :class:`InvalidRequestError`)
is kept apart from runtime failures of a run (:class:`RunFailed`, :class:`StepFailed`,
:class:`LeaseLost`, :class:`NonDeterminismError`), so callers can tell "fix your code or
config" from "this run failed".
"""

from __future__ import annotations

__all__ = [
    "ApprovalRefusedError",
    "BudgetExceeded",
    "CircuitOpenError",
    "ConfigurationError",
    "ConversationBusyError",
    "CorruptRecordError",
    "DisallowedTypeError",
    "InvalidRequestError",
    "LeaseLost",
    "NonDeterminismError",
    "NonRetryableError",
    "PayloadKeyError",
    "PayloadTooLargeError",
    "QueueFullError",
    "RunCancelled",
    "RunDeadlineExceeded",
    "RunFailed",
    "RunNotFoundError",
    "RunRejected",
    "ServerUnavailableError",
    "ServerVersionError",
    "SignalRefusedError",
    "StalwartError",
    "StepFailed",
    "StepTimeoutError",
    "ToolOutcomeUnknown",
    "UnknownAgentError",
]


class StalwartError(Exception):
    """Root of every exception Stalwart raises on purpose."""


class ConfigurationError(StalwartError):
    """Stalwart was set up wrongly (bad URL, missing server, server too old, bad name)."""


class ServerVersionError(ConfigurationError):
    """The NATS server is older than the version Stalwart needs."""


class ServerUnavailableError(StalwartError):
    """NATS or Redis could not be reached."""


class InvalidRequestError(StalwartError):
    """A run request was refused before it started: bad run id, bad input, too large."""


class UnknownAgentError(InvalidRequestError):
    """No worker has registered the requested agent name."""


class PayloadTooLargeError(InvalidRequestError):
    """An encoded payload exceeds what the NATS server accepts in one message."""


class LeaseLost(StalwartError):
    """This worker no longer owns the run: another worker took it over (fencing).

    The actor stops at once; nothing it computes afterwards is recorded.
    """


class NonDeterminismError(StalwartError):
    """On replay, the agent asked for a step that differs from the journaled one."""


class StepFailed(StalwartError):
    """A step's body raised. Raised both live and on replay, so agent code behaves the same.

    ``error_type`` and ``message`` come from the journal; on the live path ``__cause__`` is the
    original exception as well.
    """

    def __init__(self, step_key: str, error_type: str, message: str) -> None:
        super().__init__(f"step {step_key!r} failed: {error_type}: {message}")
        self.step_key = step_key
        self.error_type = error_type
        self.message = message


class RunFailed(StalwartError):
    """The run ended in failure; raised by :meth:`RunHandle.result`."""

    def __init__(self, run_id: str, error_type: str, message: str) -> None:
        super().__init__(f"run {run_id!r} failed: {error_type}: {message}")
        self.run_id = run_id
        self.error_type = error_type
        self.message = message


class RunCancelled(StalwartError):
    """The run was cancelled; raised by :meth:`RunHandle.result` and inside the agent."""

    def __init__(self, run_id: str, reason: str = "cancelled") -> None:
        super().__init__(f"run {run_id!r} was cancelled: {reason}")
        self.run_id = run_id
        self.reason = reason


class RunRejected(InvalidRequestError):
    """A worker refused the run request (it could not be decoded or validated)."""

    def __init__(self, run_id: str, reason: str) -> None:
        super().__init__(f"run {run_id!r} was rejected: {reason}")
        self.run_id = run_id
        self.reason = reason


class NonRetryableError(StalwartError):
    """Raise (or subclass) from a step body to fail the step at once, without retries."""


class DisallowedTypeError(NonRetryableError):
    """Stored data names a type that its decoder is not allowed to construct.

    Journaled step results and LangGraph checkpoints come back from Redis, and anyone who
    can write Redis can write them. A decoder therefore only rebuilds the types on its
    allow-list (its framework's own data types, the types the agent declares, and those
    passed as ``allowed_types``): it never imports a module or builds a type because the
    data names it. The run (or step) fails with this error instead; ``type_name`` is the
    name the data gave, ``allow`` says how to put a genuine type on the allow-list.
    """

    def __init__(self, type_name: str, allow: str) -> None:
        # Stored data chose the name: bound it, so a crafted one cannot flood events and logs.
        shown = type_name if len(type_name) <= 200 else type_name[:200] + "..."
        super().__init__(
            f"refused to rebuild a value of type {shown!r} from stored data: the type is "
            f"not on the decoder's allow-list; {allow}"
        )
        self.type_name = shown
        self.allow = allow


class StepTimeoutError(StalwartError):
    """A step attempt ran past its start-to-close timeout (retried per policy)."""


class RunDeadlineExceeded(StalwartError):
    """The run ran past its deadline; the deadline holds across crashes and resumes."""


class BudgetExceeded(StalwartError):
    """A run limit was reached: iterations, tokens, cost, or a tool-call loop."""

    def __init__(self, budget: str, limit: float, reached: float, detail: str = "") -> None:
        super().__init__(
            f"{budget} budget exceeded: limit {limit:g}, reached {reached:g}"
            + (f" ({detail})" if detail else "")
        )
        self.budget = budget
        self.limit = limit
        self.reached = reached


class CircuitOpenError(StalwartError):
    """The circuit breaker for this model endpoint or tool is open: failing fast."""

    def __init__(self, name: str, retry_in: float) -> None:
        super().__init__(
            f"circuit for {name!r} is open after repeated failures; retry in {retry_in:.1f}s"
        )
        self.name = name
        self.retry_after = retry_in


class ToolOutcomeUnknown(StalwartError):
    """An at-most-once step was started but its outcome was never journaled (crash mid-call)."""


# -- lookups


class RunNotFoundError(InvalidRequestError):
    """No run has this id (its record does not exist, or has expired)."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"unknown run {run_id!r}")
        self.run_id = run_id


# -- refusals at the limits of the runs stream and of signals


class QueueFullError(InvalidRequestError):
    """The runs stream is full (``runs_max_msgs`` / ``runs_max_bytes``): nothing was queued."""


class SignalRefusedError(InvalidRequestError):
    """A signal broke a limit (payload size, name length, pending count): nothing was stored."""


class ConversationBusyError(InvalidRequestError):
    """A run of a conversation with ``on_busy="reject"`` found another run of it going.

    Raised by ``Client.submit`` when the conversation is visibly busy (nothing is stored
    then), and the terminal error of a run (error type ``conversation.busy``) whose claim on
    a worker lost a race. ``holder`` is the run in the way ("" when unknown).
    """

    error_type = "conversation.busy"

    def __init__(self, conversation: str, holder: str = "") -> None:
        by = f" by run {holder!r}" if holder else ""
        super().__init__(
            f"conversation {conversation!r} is busy{by} (on_busy='reject'); submit again "
            "when it has ended, or use on_busy='queue' or 'interrupt'"
        )
        self.conversation = conversation
        self.holder = holder


class ApprovalRefusedError(InvalidRequestError):
    """An approval was refused: it does not match the pending tool call, or came too late.

    ``reason`` says why: ``unknown_call`` (no pending approval request has this call id),
    ``wrong_call``, ``wrong_tool``, ``wrong_hash`` (it approves another call, tool or
    arguments than the pending one), ``expired`` (the request expired first), ``unbound``
    (a bare ``True`` approves nothing in particular), ``malformed``. Raised by
    ``RunHandle.approve`` / ``reject`` before anything is sent; a run that receives such an
    approval publishes ``approval.refused`` with the same reason and keeps waiting.
    """

    def __init__(self, message: str, *, reason: str, call_id: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.call_id = call_id


class CorruptRecordError(StalwartError, ValueError):
    """A run record in Redis that Stalwart cannot read (written by something other than it)."""


class PayloadKeyError(StalwartError):
    """An encrypted payload cannot be decrypted here: its key id is not in this process's
    keyring, no payload codec is configured, or the payload fails authentication (wrong key
    material under that id, or tampering). ``key_id`` names the key the payload asks for.

    The payload itself is untouched: a process that has the key reads it.
    """

    def __init__(self, message: str, key_id: str = "") -> None:
        super().__init__(message)
        self.key_id = key_id
