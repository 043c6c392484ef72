"""Stopping background tasks without swallowing the stopper's own cancellation.

The tempting ``t.cancel(); with suppress(CancelledError): await t`` is wrong when the
stopper is itself cancelled while it waits: asyncio hands that cancellation on to ``t``,
``t`` ends with ``CancelledError``, and the ``suppress`` eats it, so the stopper carries on
as if nobody had asked it to stop (a supervisor told to stop while it gave up leadership
went back to its loop, and outlived its shutdown's time bound). ``asyncio.wait`` does not
hand the stopper's cancellation on and raises it in the stopper, which is what is wanted.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Collection


async def cancel_and_wait(
    tasks: Collection[asyncio.Future[Any]], timeout: float | None = None
) -> bool:
    """Cancel ``tasks`` and wait until each has ended, or ``timeout`` seconds.

    The tasks' own errors are retrieved and dropped (they are being stopped; nobody else
    will look). A cancellation of the caller propagates; the tasks are cancelled by then.
    Returns False when some task was still running at the timeout.
    """
    waiting = {t for t in tasks if not t.done()}
    for t in waiting:
        t.cancel()
    if waiting:
        _, pending = await asyncio.wait(waiting, timeout=timeout)
        if pending:
            return False
    for t in tasks:
        if not t.cancelled():
            t.exception()  # retrieved: no "exception was never retrieved" at collection
    return True
