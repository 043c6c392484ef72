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
import weakref
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Collection

_stopping: weakref.WeakSet[asyncio.Future[Any]] = weakref.WeakSet()
"""Tasks inside :func:`cancel_and_wait` now. They are not cancelled again: that would cut
their own stop short (the supervisor stops ``_supervise``, which stops its leader tasks, one
of which stops its own), and they got the first cancellation."""

RECANCEL_EVERY = 0.5
"""Seconds between cancellations of a task that has not ended yet: short next to a stop's
time bound, long enough that a task unwinding normally is not interrupted over and over."""


async def cancel_and_wait(
    tasks: Collection[asyncio.Future[Any]], timeout: float | None = None
) -> bool:
    """Cancel ``tasks`` and wait until each has ended, or ``timeout`` seconds.

    A task still running every :data:`RECANCEL_EVERY` seconds is cancelled again (see the
    module docstring), unless it is itself in this function, stopping its own tasks. The
    tasks' own errors are retrieved and dropped: they are being stopped, and nobody else
    will look. A cancellation of the caller propagates; the tasks are cancelled by then.
    Returns False when some task was still running at the timeout.
    """
    me = asyncio.current_task()
    if me is not None:
        _stopping.add(me)
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        waiting = {t for t in tasks if not t.done()}
        for t in waiting:
            t.cancel()
        while waiting:
            step = RECANCEL_EVERY
            if deadline is not None:
                step = min(step, deadline - time.monotonic())
                if step <= 0:
                    return False
            _, waiting = await asyncio.wait(waiting, timeout=step)
            for t in waiting:
                if t not in _stopping:  # one stopping its own tasks is unwinding already
                    t.cancel()
    finally:
        if me is not None:
            _stopping.discard(me)
    for t in tasks:
        if not t.cancelled():
            t.exception()  # retrieved: no "exception was never retrieved" at collection
    return True
