"""The Redis key schema: every key Stalwart (and an adapter's own data) uses, in one place.

A run's keys carry the run id as a hash tag (``<ns>:{<run_id>}:...``), so on Redis Cluster
they share one slot and a script over several of them stays atomic. This is where a
cluster-aware client would look up a run's slot.
"""

from __future__ import annotations

from dataclasses import dataclass

_RECORD = "run"
_JOURNAL = "journal"
_SIGNALS = "signals"


def run_tag(namespace: str, run_id: str) -> str:
    """``<ns>:{<run_id>}``: the prefix of every key of a run, hash tag included."""
    return f"{namespace}:{{{run_id}}}"


@dataclass(frozen=True, slots=True)
class RunKeys:
    """The keys of one run (all in the run's hash slot)."""

    namespace: str
    run_id: str

    @property
    def tag(self) -> str:
        """``<ns>:{<run_id>}``: the prefix of every key of the run, hash tag included."""
        return run_tag(self.namespace, self.run_id)

    @property
    def record(self) -> str:
        """Hash: the run record (status, epoch, owner, cancel flag ...); fences every write."""
        return f"{self.tag}:{_RECORD}"

    @property
    def journal(self) -> str:
        """Stream: the run's journal, entry ids ``<seq>-0``."""
        return f"{self.tag}:{_JOURNAL}"

    @property
    def signals(self) -> str:
        """Stream: the run's signal inbox (unconsumed signals)."""
        return f"{self.tag}:{_SIGNALS}"

    def own(self, suffix: str) -> str:
        """A key of the run's for data of one's own (an adapter's), in the run's slot."""
        return f"{self.tag}:{suffix}"


@dataclass(frozen=True, slots=True)
class KeySchema:
    """Every key of a namespace: the per-run keys and the few shared indexes."""

    namespace: str = "stalwart"

    def run(self, run_id: str) -> RunKeys:
        """The keys of ``run_id``."""
        return RunKeys(self.namespace, run_id)

    def script_keys(self, run_id: str) -> list[str]:
        """``[record, journal]``, the keys of every run script, without building a
        :class:`RunKeys` (this is on every journal append)."""
        tag = run_tag(self.namespace, run_id)
        return [f"{tag}:{_RECORD}", f"{tag}:{_JOURNAL}"]

    @property
    def runs(self) -> str:
        """Sorted set: every run id by creation time."""
        return f"{self.namespace}:runs"

    @property
    def active(self) -> str:
        """Set: run ids that have not ended (scanned by the supervisor)."""
        return f"{self.namespace}:active"

    @property
    def timers(self) -> str:
        """Sorted set: passivated runs by the time their timer fires."""
        return f"{self.namespace}:timers"
