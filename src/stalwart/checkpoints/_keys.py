"""The Redis key schema: every key Stalwart (and an adapter's own data) uses, in one place.

A run's keys carry the run id as a hash tag (``<ns>:{<run_id>}:...``), so on Redis Cluster
they share one slot and a script over several of them stays atomic.

The shared indexes (runs by creation time, active runs, timers) are one key each by default
(``<ns>:runs``, ``<ns>:active``, ``<ns>:timers``: the names every deployment so far has).
With ``index_shards`` K > 1 each is split into K keys with their own hash tag,
``<ns>:{idx.<k>}:runs`` and so on, a run in shard ``crc32(run_id) % K``: on a Redis Cluster
the K shards land on different masters, so no single node carries every submit and finish.
Readers read every shard and merge (one key per command: no cross-slot command anywhere).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

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


MAX_INDEX_SHARDS = 1024
"""More shards than this only adds reads (a reader reads every shard) for no spread."""


def check_index_shards(shards: int) -> int:
    """``shards`` if it is a usable shard count; a clear ``ValueError`` otherwise."""
    if (
        isinstance(shards, bool)
        or not isinstance(shards, int)
        or not (1 <= shards <= MAX_INDEX_SHARDS)
    ):
        raise ValueError(
            f"index shards must be an integer from 1 to {MAX_INDEX_SHARDS}, not {shards!r}"
        )
    return shards


@dataclass(frozen=True, slots=True)
class KeySchema:
    """Every key of a namespace: the per-run keys and the few shared indexes.

    ``index_shards`` splits each index into that many keys (see the module docstring);
    every process of a deployment must use the same count.
    """

    namespace: str = "stalwart"
    index_shards: int = 1
    _shard_prefixes: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_index_shards(self.index_shards)
        prefixes = (
            (self.namespace,)
            if self.index_shards == 1
            else tuple(f"{self.namespace}:{{idx.{k}}}" for k in range(self.index_shards))
        )
        object.__setattr__(self, "_shard_prefixes", prefixes)

    def run(self, run_id: str) -> RunKeys:
        """The keys of ``run_id``."""
        return RunKeys(self.namespace, run_id)

    def script_keys(self, run_id: str) -> list[str]:
        """``[record, journal]``, the keys of every run script, without building a
        :class:`RunKeys` (this is on every journal append)."""
        tag = run_tag(self.namespace, run_id)
        return [f"{tag}:{_RECORD}", f"{tag}:{_JOURNAL}"]

    def shard(self, run_id: str) -> int:
        """The index shard of ``run_id``: ``crc32(run_id) % index_shards`` (stable across
        processes and Python versions, unlike ``hash``)."""
        if self.index_shards == 1:
            return 0
        return zlib.crc32(run_id.encode()) % self.index_shards

    def runs_of(self, run_id: str) -> str:
        """The runs-index key ``run_id`` belongs in."""
        return f"{self._shard_prefixes[self.shard(run_id)]}:runs"

    def active_of(self, run_id: str) -> str:
        """The active-set key ``run_id`` belongs in."""
        return f"{self._shard_prefixes[self.shard(run_id)]}:active"

    def timers_of(self, run_id: str) -> str:
        """The timers key ``run_id`` belongs in."""
        return f"{self._shard_prefixes[self.shard(run_id)]}:timers"

    @property
    def runs_shards(self) -> list[str]:
        """Every key of the runs index (sorted sets: run ids by creation time)."""
        return [f"{p}:runs" for p in self._shard_prefixes]

    @property
    def active_shards(self) -> list[str]:
        """Every key of the active set (run ids that have not ended)."""
        return [f"{p}:active" for p in self._shard_prefixes]

    @property
    def timers_shards(self) -> list[str]:
        """Every key of the timers index (passivated runs by the time their timer fires)."""
        return [f"{p}:timers" for p in self._shard_prefixes]

    def _single(self, name: str) -> str:
        if self.index_shards != 1:
            raise ValueError(
                f"the {name} index is split into {self.index_shards} shards: use "
                f"{name}_of(run_id) or {name}_shards"
            )
        return f"{self.namespace}:{name}"

    @property
    def runs(self) -> str:
        """Sorted set: every run id by creation time (unsharded schemas only)."""
        return self._single("runs")

    @property
    def active(self) -> str:
        """Set: run ids that have not ended (unsharded schemas only)."""
        return self._single("active")

    @property
    def timers(self) -> str:
        """Sorted set: passivated runs by their timer (unsharded schemas only)."""
        return self._single("timers")
