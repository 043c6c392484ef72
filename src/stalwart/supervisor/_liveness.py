"""Fast failure detection: re-place a dead worker's runs without waiting for its leases to expire.

A lease expires a TTL (5 s by default) after its holder's last renewal; a killed process is
visible much sooner. Every worker answers on its own core subject
(:meth:`Names.alive_subject`) for as long as its NATS connection is open. The supervisor
leader keeps a map of which worker holds which run lease (a watch on the lease bucket: the
values are the owners' worker ids) and asks each lease holder every ``liveness_interval``.

Only one answer counts as death: the server's "no responders", which means it knows no
subscription on the subject, i.e. the worker's connection is gone. It must be seen twice,
``_CONFIRM`` apart, and only for a worker that answered this supervisor since the
supervisor's connection was last (re)established. A timeout (a slow or frozen process, a
partition, a server in trouble) proves nothing and is left to the lease TTL, as is a worker
that never answered (one without the responder, or whose permissions refuse it the subject).

A dead worker's leases are revoked with a compare-and-set at the revision the watch saw,
so a lease someone else took meanwhile (or that its holder renewed, proving it alive) is
left alone; then the run is checked as after any lease loss (:meth:`Supervisor.check`),
which publishes its resume request, deduplicated per epoch. A worker declared dead wrongly
is stopped by the fence: its next renewal fails the CAS (its actors stop), and its next
journal write is refused because the new owner claimed a higher epoch.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Literal

import structlog
from nats.errors import NoRespondersError

from stalwart._tasks import cancel_and_wait

if TYPE_CHECKING:
    from stalwart.broker import Broker
    from stalwart.supervisor._supervisor import Supervisor

log = structlog.get_logger("stalwart.supervisor.liveness")

Probe = Literal["alive", "gone", "unknown"]

_CONFIRM = 0.05
"""Seconds between the first "no responders" and the probe that confirms it. Longer than a
lost subscription's round trip to the server, short next to the failover it gates."""

_MIN_TIMEOUT = 0.05
"""Shortest wait for an answer (a probe's timeout is the interval, at least this)."""

_UNSEEN_EVERY = 1.0
"""Seconds between probes of a lease holder that has not answered yet. Its silence counts
for nothing, so it is asked just often enough to notice when it starts answering, without a
request every round to a worker that cannot answer (an older one without the responder), or
a permissions violation logged every round when the supervisor may not ask (old role files)."""

_UNSEEN_TIMEOUT = 1.0
"""How long the probe of a holder that has not answered yet waits for its answer."""

_SEEN_KEPT = 10_000
"""Workers remembered as having answered, beyond which those holding no lease are forgotten."""

_DEAD_KEPT = 1000
"""Workers declared dead that :attr:`Liveness.dead` remembers (the latest)."""

_REVOKE_PARALLEL = 64
"""Revocations and resume requests of one dead worker in flight at once."""


class Liveness:
    """Probes the workers that hold run leases and re-places the runs of dead ones.

    Runs as a task of the supervisor leader (:meth:`run`); cancelled when leadership ends.
    """

    def __init__(self, supervisor: Supervisor, interval: float) -> None:
        self.supervisor = supervisor
        self.interval = interval
        self.timeout = max(interval, _MIN_TIMEOUT)
        self.owned: dict[str, dict[str, int]] = {}
        """Run leases by holder: worker id -> {run id: revision the watch last saw}."""
        self._holder: dict[str, str] = {}
        """The holder of each run lease in :attr:`owned` (run id -> worker id)."""
        self.seen: set[str] = set()
        """Workers that answered since this supervisor's connection was last (re)made."""
        self.dead: list[str] = []
        """Workers declared dead, in order, the latest ``_DEAD_KEPT`` (for tests and logs)."""
        self.revoked = 0
        """Leases revoked because their holder was dead."""
        self._unseen_next: dict[str, float] = {}
        """When each holder that has not answered yet is asked next (monotonic clock)."""
        self._unseen_probes: dict[str, asyncio.Task[None]] = {}
        """Probes of holders that have not answered yet, in flight (outside the rounds)."""
        self._reconnects = -1
        self.log = supervisor.log

    @property
    def _broker(self) -> Broker:
        broker = self.supervisor.broker
        assert broker is not None, "start the supervisor first"
        return broker

    async def run(self) -> None:
        """Watch the lease bucket and probe its holders until cancelled."""
        watch = asyncio.create_task(self._watch())
        try:
            while True:
                started = time.monotonic()
                try:
                    await self.probe_round()
                except Exception as exc:  # a server restart: keep probing once it is back
                    self.log.warning("liveness.round_failed", error=repr(exc))
                await asyncio.sleep(max(self.interval - (time.monotonic() - started), 0.0))
        finally:
            await cancel_and_wait([watch, *self._unseen_probes.values()])

    # -- who holds what ---------------------------------------------------------------------

    async def _watch(self) -> None:
        broker = self._broker
        while True:
            try:
                kv = await broker.js.key_value(broker.names.lease_bucket)
                # Current values first, then every write: renewals (new revisions),
                # takeovers (new holders), releases and expiries (PURGE/DEL markers).
                watcher = await kv.watch("run.>", include_history=False)
                async for entry in watcher:
                    if entry is None:
                        continue
                    run_id = entry.key.removeprefix("run.")
                    owner = (entry.value or b"").decode()
                    if entry.operation in ("PURGE", "DEL") or not owner:
                        self._forget(run_id)
                    else:
                        self._hold(run_id, owner, int(entry.revision or 0))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.log.warning("liveness.watch_failed", error=repr(exc))
                await asyncio.sleep(1.0)

    def _hold(self, run_id: str, owner: str, revision: int) -> None:
        if self._holder.get(run_id) != owner:
            self._forget(run_id)
            self._holder[run_id] = owner
        self.owned.setdefault(owner, {})[run_id] = revision

    def _forget(self, run_id: str) -> None:
        owner = self._holder.pop(run_id, None)
        if owner is None:
            return
        runs = self.owned.get(owner)
        if runs is not None:
            runs.pop(run_id, None)
            if not runs:
                del self.owned[owner]

    # -- probing ----------------------------------------------------------------------------

    def _connection_epoch(self) -> int | None:
        """Our reconnect count, or None while disconnected (probes then prove nothing)."""
        nc = self._broker.nc
        if not nc.is_connected:
            return None
        return int(nc.stats.get("reconnects", 0))

    async def probe(self, worker_id: str, timeout: float | None = None) -> Probe:
        """Ask ``worker_id`` once: answered, no responders (gone), or anything else."""
        nc = self._broker.nc
        subject = self._broker.names.alive_subject(worker_id)
        try:
            await nc.request(subject, b"", timeout=timeout or self.timeout)
        except NoRespondersError:
            return "gone"
        except Exception:  # a timeout, a reconnect in progress: proves nothing
            return "unknown"
        return "alive"

    async def probe_round(self) -> list[str]:
        """Probe every lease holder once; re-place the runs of those found dead; return them."""
        epoch = self._connection_epoch()
        if epoch is None:
            return []
        if epoch != self._reconnects:
            # After a reconnect of ours the workers reconnect too, each in its own time: one
            # not back yet has no subscription, exactly like a dead one. Only an answer
            # after our reconnect makes its later silence mean something.
            self.seen.clear()
            self._reconnects = epoch
        # Worker ids come and go; what is kept about them must not grow without bound. A
        # worker keeps its "answered" mark between leases (one that holds nothing for a
        # moment and then dies right after its next placement is still seen dead), unless
        # the set grows past a bound: then only the current holders keep theirs.
        if len(self.seen) > _SEEN_KEPT:
            self.seen &= self.owned.keys()
        self._unseen_next = {w: t for w, t in self._unseen_next.items() if w in self.owned}
        now = time.monotonic()
        for worker_id in self.owned:
            if (
                worker_id not in self.seen
                and worker_id not in self._unseen_probes
                and self._unseen_next.get(worker_id, 0) <= now
            ):
                self._unseen_next[worker_id] = now + _UNSEEN_EVERY
                self._start_unseen_probe(worker_id, epoch)
        holders = [w for w in self.owned if w in self.seen]
        if not holders:
            return []
        first = await asyncio.gather(*(self.probe(w) for w in holders))
        suspects = [
            w for w, r in zip(holders, first, strict=True) if r == "gone" and w in self.seen
        ]
        if not suspects:
            return []
        # Twice, a moment apart: a worker whose subscription is briefly absent (its own
        # reconnect to the same server takes milliseconds) answers the second time.
        await asyncio.sleep(_CONFIRM)
        second = await asyncio.gather(*(self.probe(w) for w in suspects))
        if self._connection_epoch() != epoch:
            return []  # we reconnected in between: the answers above mean nothing
        dead = [w for w, r in zip(suspects, second, strict=True) if r == "gone"]
        for worker_id in dead:
            self.seen.discard(worker_id)
            self.dead.append(worker_id)
            del self.dead[:-_DEAD_KEPT]
            await self.take_over(worker_id)
        return dead

    def _start_unseen_probe(self, worker_id: str, epoch: int) -> None:
        """Ask a holder that has not answered yet, with a generous timeout, off the round.

        Its answer only marks it seen; a busy worker or a loaded machine may take longer
        than a round's short timeout, and must not stay unseen (its death then waiting for
        the TTL) for that, nor hold up the rounds that watch the workers already seen.
        """

        async def ask() -> None:
            result = await self.probe(worker_id, timeout=_UNSEEN_TIMEOUT)
            if result == "alive" and self._connection_epoch() == epoch:
                self.seen.add(worker_id)
                self._unseen_next.pop(worker_id, None)

        task = asyncio.create_task(ask())
        self._unseen_probes[worker_id] = task
        task.add_done_callback(lambda _: self._unseen_probes.pop(worker_id, None))

    # -- taking over ------------------------------------------------------------------------

    async def take_over(self, worker_id: str) -> int:
        """Revoke every run lease ``worker_id`` holds and re-place those runs; return how many."""
        runs = dict(self.owned.get(worker_id, {}))
        self.log.warning("worker.dead", worker=worker_id, runs=len(runs), detected_by="liveness")
        limit = asyncio.Semaphore(_REVOKE_PARALLEL)

        async def one(run_id: str, revision: int) -> bool:
            async with limit:
                try:
                    return await self._take_run(worker_id, run_id, revision)
                except Exception as exc:  # the reconcile pass or the TTL still recovers it
                    self.log.warning("liveness.take_over_failed", run_id=run_id, error=repr(exc))
                    return False

        done = await asyncio.gather(*(one(r, rev) for r, rev in runs.items()))
        return sum(done)

    async def _take_run(self, worker_id: str, run_id: str, revision: int) -> bool:
        broker = self._broker
        if not await broker.leases.revoke_at(run_id, revision):
            # The key moved after the watch saw it: re-read it. Still the dead worker's (a
            # renewal it sent just before dying): revoke at the new revision. Anyone else's,
            # or free: not ours to touch (a free lease is the usual failover's business).
            state = await broker.leases.state(run_id)
            if state.holder != worker_id or not await broker.leases.revoke_at(
                run_id, state.revision
            ):
                return False
        self.revoked += 1
        self.log.info("lease.revoked", run_id=run_id, owner=worker_id, reason="owner_dead")
        # The lease watch will see the PURGE and check the run too; checking here as well
        # does not wait on that watch (which may be re-subscribing), and the second resume
        # request of the epoch is dropped by JetStream's de-duplication.
        await self.supervisor.check(run_id)
        return True
