"""Names of streams, buckets, subjects and consumers, all derived from one namespace."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Names:
    """Every NATS name Stalwart uses, prefixed by ``namespace`` so deployments can share a server."""

    namespace: str = "stalwart"

    @property
    def _upper(self) -> str:
        return self.namespace.upper()

    @property
    def runs_stream(self) -> str:
        """Work-queue stream of run requests."""
        return f"{self._upper}_RUNS"

    @property
    def events_stream(self) -> str:
        """Limits-retention stream of run events."""
        return f"{self._upper}_EVENTS"

    @property
    def lease_bucket(self) -> str:
        """KV bucket of run leases (per-key TTL)."""
        return f"{self._upper}_LEASES"

    @property
    def workers_bucket(self) -> str:
        """KV bucket of worker heartbeats (per-key TTL)."""
        return f"{self._upper}_WORKERS"

    @property
    def agents_bucket(self) -> str:
        """KV bucket of agent names that some worker serves."""
        return f"{self._upper}_AGENTS"

    def runs_subject(self, agent: str) -> str:
        """Subject that run requests for ``agent`` are published to."""
        return f"{self.namespace}.runs.{agent}"

    @property
    def runs_wildcard(self) -> str:
        """Subjects captured by the runs stream."""
        return f"{self.namespace}.runs.>"

    def events_subject(self, run_id: str) -> str:
        """Subject of one run's events."""
        return f"{self.namespace}.events.{run_id}"

    @property
    def events_wildcard(self) -> str:
        """Subjects of all runs' events."""
        return f"{self.namespace}.events.>"

    def signals_subject(self, run_id: str) -> str:
        """Core subject that pokes a live waiting run when a signal (or cancel) arrives."""
        return f"{self.namespace}.signals.{run_id}"

    def rejected_subject(self, agent: str) -> str:
        """Where rejections of requests that carry no usable run id go."""
        return f"{self.namespace}.rejected.{agent}"

    @property
    def rejected_wildcard(self) -> str:
        """Subjects of all rejections."""
        return f"{self.namespace}.rejected.>"

    def consumer(self, agent: str) -> str:
        """Durable pull consumer shared by every worker that serves ``agent``."""
        return f"agent_{agent}"

    def lease_key(self, run_id: str) -> str:
        """KV key of a run's lease."""
        return f"run.{run_id}"

    def lease_subject(self, run_id: str) -> str:
        """Raw stream subject of a run's lease (for CAS publishes with a TTL)."""
        return f"$KV.{self.lease_bucket}.{self.lease_key(run_id)}"

    def worker_subject(self, worker_id: str) -> str:
        """Raw stream subject of a worker's heartbeat key."""
        return f"$KV.{self.workers_bucket}.{worker_id}"

    @property
    def lease_stream(self) -> str:
        """Stream that backs the lease bucket."""
        return f"KV_{self.lease_bucket}"

    @property
    def workers_stream(self) -> str:
        """Stream that backs the workers bucket."""
        return f"KV_{self.workers_bucket}"
