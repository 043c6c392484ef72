"""Stalwart: crash-proof AI agents on NATS JetStream and Redis.

Wrap an agent, and every model call, tool call and step becomes a checkpointed step; a run
whose worker dies resumes on another worker at the step where it stopped.
"""

__version__ = "0.1.0"

from stalwart.actors import App, RunContext, StepInfo, StepSpec, Worker, current_step
from stalwart.checkpoints import RunRecord
from stalwart.client import Client, RunHandle
from stalwart.config import Settings
from stalwart.errors import (
    ConfigurationError,
    InvalidRequestError,
    LeaseLost,
    NonDeterminismError,
    PayloadTooLargeError,
    RunCancelled,
    RunFailed,
    RunRejected,
    ServerUnavailableError,
    ServerVersionError,
    StalwartError,
    StepFailed,
    UnknownAgentError,
)
from stalwart.messages import RunEvent, RunRequest
from stalwart.supervisor import Supervisor

__all__ = [
    "App",
    "Client",
    "ConfigurationError",
    "InvalidRequestError",
    "LeaseLost",
    "NonDeterminismError",
    "PayloadTooLargeError",
    "RunCancelled",
    "RunContext",
    "RunEvent",
    "RunFailed",
    "RunHandle",
    "RunRecord",
    "RunRejected",
    "RunRequest",
    "ServerUnavailableError",
    "ServerVersionError",
    "Settings",
    "StalwartError",
    "StepFailed",
    "StepInfo",
    "StepSpec",
    "Supervisor",
    "UnknownAgentError",
    "Worker",
    "__version__",
    "current_step",
]
