"""Stalwart: crash-proof AI agents on NATS JetStream and Redis.

Wrap an agent, and every model call, tool call and step becomes a checkpointed step; a run
whose worker dies resumes on another worker at the step where it stopped.
"""

from stalwart._version import __version__
from stalwart.actors import App, RunContext, StepInfo, StepSpec, Worker, current_step
from stalwart.checkpoints import RunRecord
from stalwart.client import (
    Chunk,
    Client,
    Reset,
    RunHandle,
    StepDone,
    StreamEnd,
    StreamPart,
    StreamText,
)
from stalwart.config import Settings
from stalwart.errors import (
    BudgetExceeded,
    CircuitOpenError,
    ConfigurationError,
    ConversationBusyError,
    DisallowedTypeError,
    InvalidRequestError,
    LeaseLost,
    NonDeterminismError,
    NonRetryableError,
    PayloadTooLargeError,
    QueueFullError,
    RunCancelled,
    RunDeadlineExceeded,
    RunFailed,
    RunNotFoundError,
    RunRejected,
    ServerUnavailableError,
    ServerVersionError,
    SignalRefusedError,
    StalwartError,
    StepFailed,
    StepTimeoutError,
    ToolOutcomeUnknown,
    UnknownAgentError,
)
from stalwart.messages import RunEvent, RunRequest
from stalwart.policies import NO_RETRY, Limits, Policies, RetryPolicy, durable
from stalwart.supervisor import Supervisor

__all__ = [
    "NO_RETRY",
    "App",
    "BudgetExceeded",
    "Chunk",
    "CircuitOpenError",
    "Client",
    "ConfigurationError",
    "ConversationBusyError",
    "DisallowedTypeError",
    "InvalidRequestError",
    "LeaseLost",
    "Limits",
    "NonDeterminismError",
    "NonRetryableError",
    "PayloadTooLargeError",
    "Policies",
    "QueueFullError",
    "Reset",
    "RetryPolicy",
    "RunCancelled",
    "RunContext",
    "RunDeadlineExceeded",
    "RunEvent",
    "RunFailed",
    "RunHandle",
    "RunNotFoundError",
    "RunRecord",
    "RunRejected",
    "RunRequest",
    "ServerUnavailableError",
    "ServerVersionError",
    "Settings",
    "SignalRefusedError",
    "StalwartError",
    "StepDone",
    "StepFailed",
    "StepInfo",
    "StepSpec",
    "StepTimeoutError",
    "StreamEnd",
    "StreamPart",
    "StreamText",
    "Supervisor",
    "ToolOutcomeUnknown",
    "UnknownAgentError",
    "Worker",
    "__version__",
    "current_step",
    "durable",
]
