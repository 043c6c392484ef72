"""Run leases in a JetStream KV bucket: one owner per run, expiring when the owner dies.

Every write is a raw CAS publish to the key's subject with ``Nats-TTL`` (the KV API's
``update`` cannot carry a TTL, and a write without one would make the lease permanent).
The revision at acquisition (``Lease.acquired``) orders the claims of one bucket: the worker
packs it with the bucket's generation into the run's epoch (a fencing token that only grows;
see ``stalwart.checkpoints.LeasePosition``).
"""

from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from nats.js.errors import APIError, NotFoundError

from stalwart.broker._cas import CasWriter
from stalwart.broker._wire import plain_subject

if TYPE_CHECKING:
    from collections.abc import Callable

    from nats.aio.client import Client as NATS
    from nats.js import JetStreamContext

    from stalwart.broker._names import Names

_WRONG_LAST_SEQUENCE = 10071
_CAS = "Nats-Expected-Last-Subject-Sequence"


_BOOTTIME: int | None = getattr(time, "CLOCK_BOOTTIME", None)

lease_clock: Callable[[], float] = (
    functools.partial(time.clock_gettime, _BOOTTIME) if _BOOTTIME is not None else time.monotonic
)
"""Seconds on the clock lease ages are measured with.

Monotonic, and on Linux ``CLOCK_BOOTTIME``, which also advances while the machine is
suspended (``CLOCK_MONOTONIC`` does not): a worker whose whole VM was frozen must see its
lease as old when it wakes, as it must after a SIGSTOP (which both clocks count). A partial
of the C call, not a function around it: it is read before every step body."""


@dataclass(slots=True)
class Lease:
    """A lease this process holds. ``acquired`` is fixed; ``revision`` moves on each renewal.

    ``renewed_at`` (:func:`lease_clock`) is when the write the server last confirmed was
    *sent*: the server stored it later, so the lease lasts at least until
    ``renewed_at + ttl``. ``lost`` is set once a renewal proved someone else holds the key.
    ``unsure`` is set while a renewal's outcome is unknown (it timed out or the connection
    dropped: it may have been stored), so a later refusal is checked against the key.
    """

    run_id: str
    acquired: int
    """The key's revision when this lease was taken: the claim's position in its bucket (the
    run's epoch is this packed with the bucket's generation, not this number alone)."""
    revision: int
    renewed_at: float = field(default_factory=lease_clock)
    lost: bool = False
    unsure: bool = False


def lease_fresh(renewed_at: float, now: float, ttl: float, margin: float) -> bool:
    """Whether a lease last confirmed at ``renewed_at`` is surely still held at ``now``.

    The server keeps the lease at least ``ttl`` after ``renewed_at``; ``margin`` is the part
    of it we never count on (clock rate differences, a stall between this check and the code
    it guards). A clock that went backwards proves nothing either: not fresh.
    """
    age = now - renewed_at
    return 0.0 <= age < ttl - margin


def default_margin(ttl: float) -> float:
    """The safety margin used when ``lease_margin`` is 0: half the TTL.

    Renewals go out every TTL/3, so a healthy worker's lease is always younger than TTL/2
    and the check before a step costs one clock read; a worker that missed a renewal (a
    freeze, a slow server) asks the server before it starts any more user code.
    """
    return ttl / 2


@dataclass(frozen=True, slots=True)
class LeaseState:
    """What the lease key holds now: the owner's worker id and revision, or free."""

    holder: str | None
    revision: int


def _is_tombstone(headers: dict[str, str] | None) -> bool:
    # An expired key leaves a marker (Nats-Marker-Reason); a released one a PURGE/DEL.
    if not headers:
        return False
    return "Nats-Marker-Reason" in headers or headers.get("KV-Operation") in ("DEL", "PURGE")


class LeaseManager:
    """Acquire, renew, release and inspect run leases for one worker."""

    def __init__(
        self,
        js: JetStreamContext,
        names: Names,
        ttl: int,
        owner: str,
        *,
        prefix: str = "run.",
        nc: NATS | None = None,
    ) -> None:
        self._js = js
        self._cas_writer = CasWriter(nc, timeout=float(max(ttl, 1))) if nc is not None else None
        """Renewals as one pipelined write per pass (see ``_cas.py``); without a connection
        handed over, each is a ``JetStreamContext.publish``."""
        self._names = names
        self.ttl = ttl
        self.owner = owner
        self._prefix = prefix
        self.margin = default_margin(ttl)
        """Seconds of a lease's TTL never counted on (see :func:`lease_fresh`)."""
        # Renewals of one lease must not overlap: two CAS writes against the same revision
        # would see the second refused, and a lease that is ours would look lost.
        self._renewing = asyncio.Lock()
        self._to_confirm: dict[int, tuple[Lease, asyncio.Future[bool | BaseException]]] = {}
        """Leases a step is waiting to see confirmed (by id): confirmed together, one pass."""
        self._confirming: asyncio.Task[None] | None = None

    def _subject(self, name: str) -> str:
        # Run leases are keys run.<run_id>; other users (supervisor election) pick a prefix.
        return self._names.lease_subject(name, self._prefix)

    async def _cas(self, run_id: str, expected: int) -> int:
        subject = self._subject(run_id)
        writer = self._cas_writer
        if writer is not None and plain_subject(subject):
            # Once per placement: nats-py's request path (a reply inbox and future, header
            # validation, a PubAck parsed) costs the worker several times this write.
            return await writer.write_one(subject, self.owner.encode(), expected, self.ttl)
        ack = await self._js.publish(
            subject,
            self.owner.encode(),
            headers={_CAS: str(expected)},
            msg_ttl=self.ttl,
        )
        return int(ack.seq)

    async def state(self, run_id: str) -> LeaseState:
        """The current holder of ``run_id``'s lease, or ``holder=None`` when it is free."""
        try:
            msg = await self._js.get_msg(self._names.lease_stream, subject=self._subject(run_id))
        except NotFoundError:
            return LeaseState(None, 0)
        if _is_tombstone(msg.headers):
            return LeaseState(None, int(msg.seq or 0))
        return LeaseState((msg.data or b"").decode(), int(msg.seq or 0))

    async def acquire(self, run_id: str) -> Lease | None:
        """Take the lease if nobody holds it (also over an expired or released one)."""
        expected = 0
        for _ in range(3):
            sent = lease_clock()
            try:
                rev = await self._cas(run_id, expected)
                return Lease(run_id=run_id, acquired=rev, revision=rev, renewed_at=sent)
            except APIError as exc:
                if exc.err_code != _WRONG_LAST_SEQUENCE:
                    raise
            current = await self.state(run_id)
            if current.holder is not None:
                return None
            expected = current.revision  # take over the marker; retry if it moved meanwhile
        return None

    async def renew(self, leases: list[Lease]) -> list[Lease]:
        """Renew many leases with pipelined publishes; return the ones that were lost.

        A lease is lost only when the server refuses its compare-and-set: the key moved
        (someone took it over after it expired, or it expired and the expiry marker now sits
        on the key, or it was revoked). A renewal that gets no answer (the server is slow,
        unreachable, or a JetStream cluster is electing the stream's leader) proves nothing,
        so the lease is kept and renewed at the next pass: if it ran out meanwhile, that
        renewal is refused and the lease is lost then. Until a renewal is confirmed, the
        actor's pre-step check (:meth:`fresh`, :meth:`confirm`) keeps user code from
        starting, and the epoch fence in Redis stops a step whose lease was taken over.
        (Before, a TTL without an answer counted as lost: a 5 s leader election then dropped
        every run of every worker.)
        """
        leases = [lease for lease in leases if not lease.lost]
        if not leases:
            return []
        async with self._renewing:
            outcomes = await self._cas_pass(leases)
        return [lease for lease, ok in zip(leases, outcomes, strict=True) if ok is False]

    async def _cas_pass(self, leases: list[Lease]) -> list[bool | BaseException]:
        """One CAS write per lease, pipelined (hold ``_renewing``). Per lease: True when it
        is renewed, False when the server refused it (``lost`` set), or the error when there
        was no answer (``unsure`` set: it may have been stored; see :meth:`_adopt_unsure`)
        or another error (the lease is kept)."""
        sent = lease_clock()
        results = await self._publish_many(leases)
        out: list[bool | BaseException] = []
        for lease, res in zip(leases, results, strict=True):
            if not isinstance(res, BaseException):
                lease.revision = res
                lease.renewed_at = sent
                lease.unsure = False
                out.append(True)
            elif isinstance(res, APIError) and res.err_code == _WRONG_LAST_SEQUENCE:
                if not await self._adopt_unsure(lease):
                    lease.lost = True
                    out.append(False)
                elif lease.unsure:  # the check itself got no answer: ask again later
                    out.append(TimeoutError("no answer while checking an unanswered renewal"))
                else:
                    out.append(True)
            else:
                if not isinstance(res, APIError):
                    # No answer: the write may have been stored (see _adopt_unsure).
                    lease.unsure = True
                out.append(res)
        return out

    async def _publish_many(self, leases: list[Lease]) -> list[int | BaseException]:
        value = self.owner.encode()
        subjects = [self._subject(lease.run_id) for lease in leases]
        writer = self._cas_writer
        if writer is not None and all(plain_subject(s) for s in subjects):
            return await writer.write(
                [(s, value, lease.revision) for s, lease in zip(subjects, leases, strict=True)],
                self.ttl,
            )
        # Concurrent requests are pipelined on the one connection. (Not publish_async:
        # in nats-py 2.16 a rejected async publish never resolves its future.)
        acks = await asyncio.gather(
            *(
                self._js.publish(s, value, headers={_CAS: str(lease.revision)}, msg_ttl=self.ttl)
                for s, lease in zip(subjects, leases, strict=True)
            ),
            return_exceptions=True,
        )
        return [a if isinstance(a, BaseException) else int(a.seq) for a in acks]

    async def _adopt_unsure(self, lease: Lease) -> bool:
        """After a refused CAS: whether the key's last write is our own unanswered renewal.

        A renewal whose answer was lost (a timeout during an election, a reconnect) may
        have been stored; the next one then names a stale revision and is refused although
        nobody else wrote. That write is recognised exactly: this owner's value, stored
        with the CAS header naming this lease's revision (a write of another lease, even
        this worker's own new lease on the same run after this one expired, names the
        marker's or no revision). It is adopted and the lease renewed once more (its TTL
        counts from an unknown moment). Only for a lease with such a write outstanding
        (``unsure``): otherwise a refusal means lost.
        """
        if not lease.unsure:
            return False
        try:
            msg = await self._js.get_msg(
                self._names.lease_stream, subject=self._subject(lease.run_id)
            )
            headers = msg.headers or {}
            ours = (
                not _is_tombstone(headers)
                and (msg.data or b"") == self.owner.encode()
                and headers.get(_CAS) == str(lease.revision)
                and int(msg.seq or 0) > lease.revision
            )
            if not ours:
                return False
            sent = lease_clock()
            seq = await self._cas(lease.run_id, int(msg.seq or 0))
        except APIError:  # NotFoundError included: the key is gone, so is the lease
            return False
        except Exception:  # still no answer: keep it unsure, try again at the next pass
            return True
        lease.revision, lease.renewed_at, lease.unsure = seq, sent, False
        return True

    def fresh(self, lease: Lease) -> bool:
        """Whether ``lease`` is surely still ours without asking the server (one clock read)."""
        return not lease.lost and lease_fresh(
            lease.renewed_at, lease_clock(), self.ttl, self.margin
        )

    def expired(self, lease: Lease) -> bool:
        """Whether ``lease`` has surely run out (no renewal confirmed for a whole TTL)."""
        return lease.lost or lease_clock() - lease.renewed_at >= self.ttl

    async def confirm(self, lease: Lease) -> bool:
        """Prove ``lease`` is still ours by renewing it now, unless it is fresh: one CAS
        write, sent with the other leases confirmed at the same time as one pass.

        True: it is ours and extended by a TTL. False: it moved (someone took it over, or it
        expired and its marker sits on the key). Raises ``TimeoutError`` (or a NATS error)
        when the server did not answer within a TTL (or at once, "no responders" while a
        cluster elects the stream's leader); the caller tries again: only a refusal is an
        answer, since a lease that ran out meanwhile is refused once the server answers.
        """
        if lease.lost:
            return False
        if self.fresh(lease):
            return True
        loop = asyncio.get_running_loop()
        waiter = self._to_confirm.get(id(lease))
        if waiter is None:
            waiter = self._to_confirm[id(lease)] = (lease, loop.create_future())
        if self._confirming is None:  # also for a waiter whose pass never started
            self._confirming = loop.create_task(self._confirm_queued())
        # One attempt waits at most a TTL (for a batch renewal holding the lock, or for the
        # server); the caller decides how long to keep trying. Shielded: the pass goes on
        # for the other leases in it.
        async with asyncio.timeout(max(float(self.ttl), 1.0)):
            outcome = await asyncio.shield(waiter[1])
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def _confirm_queued(self) -> None:
        """Confirm every lease queued by :meth:`confirm` in one pass: after a burst of
        work, many runs find their lease unconfirmed at once, and one write each, taking
        turns, would outlast the TTL (each waits for the one before)."""
        waiters: list[tuple[Lease, asyncio.Future[bool | BaseException]]] = []
        try:
            async with self._renewing:
                self._confirming = None  # confirms from now on start the next pass
                waiters = list(self._to_confirm.values())
                self._to_confirm.clear()
                todo: list[Lease] = []
                for lease, fut in waiters:
                    if lease.lost or self.fresh(lease):  # a renewal pass settled it
                        fut.set_result(not lease.lost)
                    else:
                        todo.append(lease)
                outcomes = await self._cas_pass(todo)
                settled = {id(lease): ok for lease, ok in zip(todo, outcomes, strict=True)}
                for lease, fut in waiters:
                    if not fut.done():
                        fut.set_result(settled[id(lease)])
        except BaseException as exc:
            for _, fut in waiters:
                if not fut.done():
                    fut.set_result(exc if isinstance(exc, Exception) else TimeoutError(repr(exc)))
            raise
        finally:
            if self._confirming is asyncio.current_task():
                self._confirming = None

    async def revoke(self, run_id: str) -> None:
        """Take a lease away from whoever holds it (its next renewal fails: it stops)."""
        await self._js.publish(
            self._subject(run_id),
            b"",
            headers={"KV-Operation": "PURGE", "Nats-Rollup": "sub"},
            msg_ttl=1,
        )

    async def release_nowait(self, lease: Lease) -> None:
        """Give the lease up without waiting for the server's answer (a finished run's).

        If the release is lost or refused, the lease runs out at its TTL: nothing waits
        on it, since the run record already says the run ended.
        """
        # A plain publish (no reply asked for) of the same message :meth:`release` sends.
        await self._js._nc.publish(
            self._subject(lease.run_id), b"", headers={**_purge(lease), "Nats-TTL": "1"}
        )

    async def release(self, lease: Lease) -> bool:
        """Give the lease up at once (a PURGE rollup that itself expires); False if not ours."""
        try:
            # After any renewal in flight: it moves the revision this CAS must name.
            async with self._renewing:
                await self._js.publish(
                    self._subject(lease.run_id),
                    b"",
                    headers=_purge(lease),
                    msg_ttl=1,
                )
        except APIError as exc:
            if exc.err_code == _WRONG_LAST_SEQUENCE:
                return False
            raise
        return True

    async def revoke_at(self, run_id: str, revision: int) -> bool:
        """Take ``run_id``'s lease away only if its key is still at ``revision``.

        For a lease whose holder is known to be dead: the caller read the key at
        ``revision`` (holder and all), and the CAS makes sure the key has not moved since,
        so a lease that someone else took meanwhile (or that its holder renewed, proving it
        alive) is never revoked. True when revoked, False when the key moved. The holder,
        if it was alive after all, loses its next renewal and stops; its writes are fenced.
        """
        try:
            await self._js.publish(
                self._subject(run_id),
                b"",
                headers={_CAS: str(revision), "KV-Operation": "PURGE", "Nats-Rollup": "sub"},
                msg_ttl=1,
            )
        except APIError as exc:
            if exc.err_code == _WRONG_LAST_SEQUENCE:
                return False
            raise
        return True


def _purge(lease: Lease) -> dict[str, str]:
    """Headers of a release: a PURGE rollup of the key, only if ``lease`` still holds it."""
    return {_CAS: str(lease.revision), "KV-Operation": "PURGE", "Nats-Rollup": "sub"}
