"""The operations read model: what a deployment is doing, for the CLI, the console and
scripts. Every result is a msgspec Struct that encodes to JSON as it is
(``msgspec.json.encode(await list_runs(client))``).

- :func:`list_runs`: runs filtered by status, agent, creation time and run id, newest first,
  paged by an opaque cursor, with bounded work per call; each with its current owner from
  the lease bucket (a run whose worker is gone shows ``placement="awaiting_worker"``).
- :func:`run_detail`: one run's record, step timeline, epochs (owners, failovers and their
  gaps), waits, pending signals and approvals, and result.
- :func:`conversation_view`: a conversation now (holder, turns, items, queue).
- :func:`workers`: live workers from their heartbeats (capacity, active, free, breakers).
- :func:`replay_recent`: the deploy gate, the recent runs of an agent replayed offline
  against new code (``stalwart replay --recent``).
- :func:`agents`: per agent and lane, pending requests, consumers, workers, runs in flight
  and recent throughput.

Actions (cancel, signal, approve, fork) are :class:`~stalwart.client.Client` /
:class:`~stalwart.client.RunHandle` methods.
"""

from __future__ import annotations

from stalwart.operations._deploy_gate import GateReport, replay_recent
from stalwart.operations._detail import (
    ConversationView,
    EpochView,
    RunDetail,
    SignalView,
    TimelineStep,
    WaitView,
    conversation_view,
    run_detail,
)
from stalwart.operations._fleet import AgentView, WorkerView, agents, workers
from stalwart.operations._owners import RunPlacement
from stalwart.operations._runs import RunPage, RunQuery, RunSummary, list_runs

__all__ = [
    "AgentView",
    "ConversationView",
    "EpochView",
    "GateReport",
    "RunDetail",
    "RunPage",
    "RunPlacement",
    "RunQuery",
    "RunSummary",
    "SignalView",
    "TimelineStep",
    "WaitView",
    "WorkerView",
    "agents",
    "conversation_view",
    "list_runs",
    "replay_recent",
    "run_detail",
    "workers",
]
