"""What the worker hands a run actor: the placement it won, and what all its actors share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from stalwart.actors import _telemetry as obs

if TYPE_CHECKING:
    import asyncio

    from stalwart.actors._app import AgentSpec
    from stalwart.broker import Broker, Lease
    from stalwart.checkpoints import CheckpointStore
    from stalwart.flow import FlowGate
    from stalwart.policies import Breakers


@dataclass(frozen=True, slots=True)
class Placement:
    """One placement of a run, as the worker won it: the lease and what the claim returned."""

    spec: AgentSpec
    run_id: str
    lease: Lease
    epoch: int
    """The run's epoch, assigned by the claim: the fencing token of every write."""
    claim_seq: int
    """The journal position of the ``Started`` entry the claim wrote."""
    input: bytes
    cancel: str = ""
    """The cancel reason stored before the claim, if any."""
    deadline: float = 0.0
    """The run's absolute deadline (0: none); it holds across resumes."""
    claimed_at: float = 0.0
    trace_parent: obs.TraceParent = obs.NO_PARENT
    """The trace this placement continues (the submitter's, from the run record)."""
    lane: str = ""
    """The lane the request came through ("": default): where this worker's own resume
    requests for the run go."""
    conversation: str = ""
    """The conversation of the request ("" for none, and in resume requests: the record's)."""
    on_busy: str = "queue"
    submitted_at: float = 0.0


@dataclass(frozen=True, slots=True)
class ActorDeps:
    """What every run actor of a worker shares: servers, breakers, settings."""

    store: CheckpointStore
    broker: Broker
    worker_id: str
    breakers: Breakers
    fetch_closed: asyncio.Event
    """Set once the worker has no fetch outstanding (a hand-over publishes after it)."""
    passivate_after: float = 60.0
    conversation_recheck: float = 300.0
    confirm_retry: float = 0.25
    flow: FlowGate | None = None
    """The app's flow rules bound to the store (None: the app has none)."""
