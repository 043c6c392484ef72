"""Run actors, the durable step context, and the worker that hosts them."""

from stalwart.actors._actor import RunActor
from stalwart.actors._app import AgentSpec, App
from stalwart.actors._context import RunContext, StepInfo, StepSpec, Usage, current_step
from stalwart.actors._conversation import Conversation
from stalwart.actors._fingerprint import fingerprint
from stalwart.actors._waits import WaitTimeout
from stalwart.actors._worker import Worker
from stalwart.policies import StepOptions, options_of

__all__ = [
    "AgentSpec",
    "App",
    "Conversation",
    "RunActor",
    "RunContext",
    "StepInfo",
    "StepOptions",
    "StepSpec",
    "Usage",
    "WaitTimeout",
    "Worker",
    "current_step",
    "fingerprint",
    "options_of",
]
