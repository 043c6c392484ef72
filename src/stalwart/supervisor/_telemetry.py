"""The supervisor's side of telemetry: its state and the run records it reads, as plain records.

The supervisor calls these with itself or the record it read (``obs.run_seen(self, run_id,
record)``), and each builds the small frozen record that :mod:`stalwart.telemetry` takes.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Protocol

from stalwart import telemetry as tm
from stalwart._ids import DEFAULT_LANE
from stalwart.telemetry import dead_lettered, failover

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from stalwart.checkpoints import RunRecord

__all__ = [
    "dead_lettered",
    "failover",
    "resume_span",
    "run_seen",
    "supervisor_pass",
    "watch_supervisor",
]


class _Supervisor(Protocol):
    @property
    def supervisor_id(self) -> str: ...
    @property
    def is_leader(self) -> bool: ...
    @property
    def pending_requests(self) -> dict[tuple[str, str], int]: ...


def watch_supervisor(supervisor: _Supervisor) -> None:
    """A supervisor started: the gauges ask it for a snapshot when scraped, while it lives."""
    ref = weakref.ref(supervisor)

    def snapshot() -> tm.SupervisorSnapshot | None:
        s = ref()
        if s is None:
            return None
        lanes = s.pending_requests.items() if s.is_leader else ()
        pending = {(agent, lane or DEFAULT_LANE): n for (agent, lane), n in lanes}
        return tm.SupervisorSnapshot(s.supervisor_id, s.is_leader, pending)

    tm.watch_supervisor(snapshot)


def supervisor_pass(supervisor: _Supervisor, run_ids: list[str]) -> None:
    """A reconcile pass starts over the active set ``run_ids``."""
    tm.supervisor_pass(tm.ReconcilePass(supervisor.supervisor_id, run_ids))


def run_seen(supervisor: _Supervisor, run_id: str, record: RunRecord | None) -> None:
    """The supervisor read a run's record (None: it is gone)."""
    status = record.status if record is not None else None
    tm.run_seen(tm.RunSeen(supervisor.supervisor_id, run_id, status))


def resume_span(record: RunRecord, subject: str, lost_epoch: int) -> AbstractContextManager[None]:
    """Around re-placing ``record``'s run: a PRODUCER span in the run's own trace."""
    return tm.resume_span(
        tm.RunResumed(record.run_id, record.agent, record.worker, record.trace, subject, lost_epoch)
    )
