"""Stopping background tasks, even when a cancellation is lost on the way.

Two ways a cancellation goes missing, and what this module does about each:

- The tempting ``t.cancel(); with suppress(CancelledError): await t`` swallows the
  *stopper's* own cancellation: if the stopper is cancelled while it waits, asyncio hands
  that on to ``t``, ``t`` ends with ``CancelledError`` and the ``suppress`` eats it, so the
  stopper carries on. ``asyncio.wait`` does not hand it on and raises it in the stopper.
- The *task* can swallow its cancellation: on Python 3.11, ``asyncio.wait_for`` returns the
  inner result and drops a cancellation that arrives as that result lands, and nats-py's
  requests are built on it. The task then goes on to its next ``await`` as if nothing had
  happened (a supervisor that lost its leadership under load waited forever for its lease
  watch to stop, and fired no timer again). So a task still running after
  :data:`RECANCEL_EVERY` is cancelled again, until it ends.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Collection

RECANCEL_EVERY = 0.5
"""Seconds between cancellations of a task that has not ended yet: short next to a stop's
time bound, long enough that a task unwinding normally is not interrupted over and over."""


async def cancel_and_wait(
    tasks: Collection[asyncio.Future[Any]], timeout: float | None = None
) -> bool:
    """Cancel ``tasks`` and wait until each has ended, or ``timeout`` seconds.

    A task still running every :data:`RECANCEL_EVERY` seconds is cancelled again (see the
    module docstring). The tasks' own errors are retrieved and dropped: they are being
    stopped, and nobody else will look. A cancellation of the caller propagates; the tasks
    are cancelled by then. Returns False when some task was still running at the timeout.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    waiting = {t for t in tasks if not t.done()}
    while waiting:
        for t in waiting:
            t.cancel()
        step = (
            RECANCEL_EVERY if deadline is None else min(RECANCEL_EVERY, deadline - time.monotonic())
        )
        if step <= 0:
            return False
        _, waiting = await asyncio.wait(waiting, timeout=step)
    for t in tasks:
        if not t.cancelled():
            t.exception()  # retrieved: no "exception was never retrieved" at collection
    return True
