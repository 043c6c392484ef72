"""Steering runs from outside their owner: cancel, reject, dead letter, signals, timers.

Each is one script on the run's keys, so it is atomic against a worker that is claiming or
finishing the run at the same moment; the caller learns whether the run must be woken.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, cast

from stalwart.checkpoints import _scripts
from stalwart.checkpoints._codec import seal_bytes
from stalwart.checkpoints._fence import stale_error
from stalwart.checkpoints._runs import REJECTED_ERROR, CancelOutcome, RejectOutcome, unplaced_end

if TYPE_CHECKING:
    from stalwart.checkpoints._writer import ScriptRunner


class RunControl:
    """Cancels, rejections, dead letters, signals, passivation and timers (the base of
    :class:`CheckpointStore`, self-contained: it owns what it uses)."""

    def __init__(self, runner: ScriptRunner) -> None:
        self._runner = runner
        client = runner.redis
        self._cancel = client.register_script(_scripts.CANCEL)
        self._signal = client.register_script(_scripts.SIGNAL)
        self._passivate = client.register_script(_scripts.PASSIVATE)
        self._dead_letter = client.register_script(_scripts.DEAD_LETTER)
        self._reject = client.register_script(_scripts.REJECT)

    # -- cancellation, rejection, dead letters ----------------------------------------------

    async def request_cancel(self, run_id: str, reason: str = "cancelled") -> CancelOutcome:
        """Cancel a run: at once if it was never placed, else at its owner's next step."""
        outcome, _ = await self.cancel_run(run_id, reason)
        return outcome

    async def cancel_run(
        self, run_id: str, reason: str = "cancelled"
    ) -> tuple[CancelOutcome, int | None]:
        """Like :meth:`request_cancel`; also returns the epoch to wake if the run is passivated."""
        now = time.time()
        entry = unplaced_end(now, "cancelled", "RunCancelled", reason)
        reply = await self._cancel(
            keys=self._runner.run_keys(run_id), args=[repr(now), reason, entry]
        )
        outcome: CancelOutcome = reply[0].decode()
        if outcome == "cancelled":
            await self._runner.mark_inactive(run_id)
        wake = int(reply[2]) if len(reply) > 2 and reply[1] == b"wake" else None
        return outcome, wake

    async def reject_request(
        self, run_id: str, agent: str, reason: str, *, own: bool
    ) -> tuple[RejectOutcome, int]:
        """Record the rejection of an unusable request naming ``run_id`` (sent to ``agent``).

        Ends the run (``rejected``, with the seq of its Finished entry) only when ``own``
        (the request is the run's own submission) and the run of ``agent`` was never placed.
        ``missing``: no such run; ``unrelated``: the run is live, ended or another agent's,
        and the rejection is not about it.
        """
        now = time.time()
        entry = unplaced_end(now, "failed", REJECTED_ERROR, reason)
        reply = await self._reject(
            keys=self._runner.run_keys(run_id),
            args=[repr(now), reason, entry, agent, "1" if own else "0"],
        )
        outcome: RejectOutcome = reply[0].decode()
        if outcome == "rejected":
            await self._runner.mark_inactive(run_id)
            return outcome, int(reply[1])
        return outcome, 0

    async def dead_letter(self, run_id: str, agent: str, reason: str) -> bool:
        """Fail a run whose request could not be delivered; False if a worker placed it."""
        now = time.time()
        entry = unplaced_end(now, "failed", "DeadLettered", reason)
        reply = await self._dead_letter(
            keys=self._runner.run_keys(run_id), args=[repr(now), reason, entry, run_id, agent]
        )
        if reply[0] == b"failed":
            await self._runner.mark_inactive(run_id)
            return True
        return False

    async def reject(self, run_id: str, agent: str, reason: str) -> str:
        """End ``agent``'s run that was never placed as rejected (``RunRejected`` to readers).

        For a request that will never be served (no worker serves its agent, or the runs
        stream refused it): the run's own request, so :meth:`reject_request` with ``own``.
        Returns ``rejected``, ``missing`` (no record: nothing to end) or ``skipped`` (a
        worker placed it meanwhile, it has ended, or it is another agent's run).
        """
        outcome, _ = await self.reject_request(run_id, agent, reason, own=True)
        return "skipped" if outcome == "unrelated" else outcome

    # -- signals and passivation ------------------------------------------------------------

    async def add_signal(
        self, run_id: str, name: str, payload: bytes, *, max_pending: int = 0
    ) -> tuple[str, str, int]:
        """Store a signal for the run. Returns (outcome, signal id, epoch).

        ``outcome`` is ``wake`` when the run is passivated waiting for this signal (the
        caller must have it re-placed), ``stored``, ``terminal``, ``missing``, or ``full``
        when the run already holds ``max_pending`` unconsumed signals (then the third
        item is how many; nothing was stored). ``max_pending`` 0 means no limit. The payload
        is sealed here when a payload codec is set (and it is not sealed already).
        """
        run = self._runner.keys.run(run_id)
        reply = await self._signal(
            keys=[run.record, run.signals],
            args=[name, seal_bytes(payload), repr(time.time()), max_pending],
        )
        outcome = reply[0].decode()
        if outcome in ("wake", "stored", "full"):
            return outcome, reply[1].decode(), int(reply[2])
        return outcome, "", 0

    async def read_signals(
        self, run_id: str, *, after: str = "", count: int | None = None
    ) -> list[tuple[str, str, bytes]]:
        """Signals sent to the run and not yet deleted: (signal id, name, msgpack payload).

        Oldest first; only those after signal id ``after`` when given, at most ``count``.
        """
        rows = cast(
            "list[tuple[bytes, dict[bytes, bytes]]]",
            await self._runner.redis.xrange(
                self._runner.keys.run(run_id).signals,
                min=f"({after}" if after else "-",
                count=count,
            ),
        )
        return [(sid.decode(), f[b"name"].decode(), f.get(b"payload", b"")) for sid, f in rows]

    async def read_signal(self, run_id: str, sid: str) -> bytes | None:
        """One signal's payload, or None when it is gone."""
        found = cast(
            "list[tuple[bytes, dict[bytes, bytes]]]",
            await self._runner.redis.xrange(
                self._runner.keys.run(run_id).signals, min=sid, max=sid
            ),
        )
        return found[0][1].get(b"payload", b"") if found else None

    async def delete_signals(self, run_id: str, sids: list[str]) -> None:
        """Drop consumed signals from the inbox (their consumption is in the journal)."""
        if sids:
            await self._runner.redis.xdel(self._runner.keys.run(run_id).signals, *sids)

    async def cancel_flag(self, run_id: str) -> str:
        """The run's pending cancellation reason ("" for none), without reading the record."""
        raw = await self._runner.redis.hget(self._runner.keys.run(run_id).record, "cancel")
        return raw.decode() if isinstance(raw, bytes) else ""

    async def passivate(self, run_id: str, epoch: int, waiting_for: str, wake_at: float) -> None:
        """Mark the run waiting (fenced by ``epoch``) and arm its timer if it has one."""
        reply = await self._passivate(
            keys=[self._runner.keys.run(run_id).record],
            args=[epoch, waiting_for, repr(wake_at), repr(time.time())],
        )
        if reply[0] != b"ok":
            raise stale_error(run_id, epoch, reply[1].decode())
        if wake_at:
            await self._runner.redis.zadd(self._runner.keys.timers_of(run_id), {run_id: wake_at})

    async def due_timers(self, now: float, limit: int = 500) -> list[str]:
        """Runs whose timer is due, earliest first (at most ``limit``, across every shard)."""
        due: list[tuple[float, str]] = []
        # One read per shard (each its own slot on a cluster), merged here by due time.
        for key in self._runner.keys.timers_shards:
            rows = cast(
                "list[tuple[bytes, float]]",
                await self._runner.redis.zrangebyscore(
                    key, "-inf", now, start=0, num=limit, withscores=True
                ),
            )
            due.extend((score, rid.decode()) for rid, score in rows)
        due.sort()
        return [rid for _, rid in due[:limit]]

    async def remove_timer(self, run_id: str) -> None:
        """Disarm a run's timer."""
        await self._runner.redis.zrem(self._runner.keys.timers_of(run_id), run_id)
