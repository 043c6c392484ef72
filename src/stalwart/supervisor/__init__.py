"""Failure detection and re-placement of orphaned runs. Never runs user code."""

from stalwart.supervisor._supervisor import Supervisor, Verdict, judge

__all__ = ["Supervisor", "Verdict", "judge"]
