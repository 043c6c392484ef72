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

    def holds(self) -> bool:
        """Whether the lease is ours without asking: not lost, and renewed recently."""
        return not self._state.lost and self._leases.fresh(self._lease)

    async def confirm(self) -> None:
        """Return only once the lease is known to be ours; raise :class:`LeaseLost` if not.

        The flags alone are not enough: a worker frozen (SIGSTOP, a stalled VM, a long GC)
        wakes with ``lost`` unset while another worker may already have taken the run over
        and journaled the very step it is about to start. So unless the last confirmed
        renewal is recent (one clock read, see ``lease_margin``), the lease is renewed now,
        and no user code starts until the server said yes.

        A server that does not answer (down, slow, or a NATS cluster electing the lease
        stream's leader, which takes seconds) is asked again every ``retry`` seconds for as
        long as it takes: no answer proves nothing, and giving the run up would only have it
        re-placed, its current step run twice. Once the server answers, a lease that ran out
        meanwhile is refused (its key moved: another owner, or the expiry marker) and the
        run is given up then. Raises nothing but ``LeaseLost``, so a step can call it inside
        the ``try`` that records the body's own errors.
        """
        state = self._state
        if state.lost:
            raise LeaseLost(f"run {state.run_id!r}: epoch {state.epoch} lost its lease")
        leases, lease = self._leases, self._lease
        if leases.fresh(lease):
            return
        failures = 0
        while True:
            try:
                if await leases.confirm(lease):
                    if failures:
                        self._log.info("lease.confirmed_after_retries", attempts=failures + 1)
                    return
                break
            except (OSError, NatsError) as exc:
                failures += 1
                if failures == 1 or failures % 20 == 0:  # one line, then a reminder now and then
                    self._log.warning(
                        "lease.confirm_failed",
                        error=repr(exc),
                        attempts=failures,
                        expired=leases.expired(lease),
                    )
                await asyncio.sleep(self._retry)
        state.lost = True
        raise LeaseLost(
            f"run {state.run_id!r}: the lease of epoch {state.epoch} was taken over or ran "
            "out (found when confirming it before user code)"
        )
