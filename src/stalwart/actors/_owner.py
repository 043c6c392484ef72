"""The lease check before user code: ``confirm`` that the run is still ours."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from nats.errors import Error as NatsError

from stalwart.actors._rules import boundary_error
from stalwart.errors import LeaseLost

if TYPE_CHECKING:
    import structlog

    from stalwart.actors._rules import RunState
    from stalwart.broker import Lease, LeaseManager


class LeaseOwner:
    """The :class:`~stalwart.actors._ports.Owner` of a live run: its lease in JetStream KV."""

    def __init__(
        self,
        leases: LeaseManager,
        lease: Lease,
        state: RunState,
        log: structlog.typing.FilteringBoundLogger,
        retry: float = 0.25,
    ) -> None:
        self._leases = leases
        self._lease = lease
        self._state = state
        self._log = log
        self._retry = retry

    async def ensure(self) -> None:
        """Before user code starts: the step-boundary check, then :meth:`confirm`."""
        stop = boundary_error(self._state)
        if stop is not None:
            raise stop
        await self.confirm()

    async def confirm(self) -> None:
        """Return only once the lease is known to be ours; raise :class:`LeaseLost` if not.

        The flags alone are not enough: a worker frozen (SIGSTOP, a stalled VM, a long GC)
        wakes with ``lost`` unset while another worker may already have taken the run over
        and journaled the very step it is about to start. So unless the last confirmed
        renewal is recent (one clock read, see ``lease_margin``), the lease is renewed now,
        and no user code starts until the server said yes. A server that cannot be asked is
        retried until the lease has surely expired; then the run is given up (the supervisor
        re-places it). Raises nothing but ``LeaseLost``, so a step can call it inside the
        ``try`` that records the body's own errors.
        """
        state = self._state
        if state.lost:
            raise LeaseLost(f"run {state.run_id!r}: epoch {state.epoch} lost its lease")
        leases, lease = self._leases, self._lease
        if leases.fresh(lease):
            return
        while True:
            try:
                if await leases.confirm(lease):
                    return
                why = "was taken over (found when confirming it before user code)"
            except (OSError, NatsError) as exc:
                if not leases.expired(lease):
                    self._log.warning("lease.confirm_failed", error=repr(exc))
                    await asyncio.sleep(self._retry)
                    continue
                why = "could not be confirmed within its TTL (server unreachable)"
            state.lost = True
            raise LeaseLost(f"run {state.run_id!r}: the lease of epoch {state.epoch} {why}")
