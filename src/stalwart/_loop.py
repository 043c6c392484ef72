"""Which event loop a ``stalwart`` process runs on: asyncio's own, or uvloop if asked for.

uvloop lowers the worker's CPU per durable step by a few per cent on this workload (0.94x
over 28 rounds; docs/benchmarks.md, "uvloop, opt-in"). It is opt-in: the gain is within one
round's spread, it is not built for Windows, and asyncio's loop is the one the test suite
runs every process on.
"""

from __future__ import annotations

import asyncio
import importlib
import os

from stalwart.errors import ConfigurationError

EVENT_LOOP_ENV = "STALWART_EVENT_LOOP"
"""``asyncio`` (the default), ``uvloop`` (an error if it is not installed) or ``auto``
(uvloop when it is installed, else asyncio)."""
EVENT_LOOPS = ("asyncio", "uvloop", "auto")


def install_event_loop() -> str:
    """Set the event loop policy ``STALWART_EVENT_LOOP`` asks for, before ``asyncio.run``;
    returns the loop chosen (``asyncio`` or ``uvloop``).

    Raises :class:`ConfigurationError` for a value not in :data:`EVENT_LOOPS`, and for
    ``uvloop`` when uvloop cannot be imported (``pip install 'stalwart[uvloop]'``).
    """
    raw = os.environ.get(EVENT_LOOP_ENV, "")
    choice = raw.strip().lower() or "asyncio"
    if choice not in EVENT_LOOPS:
        raise ConfigurationError(f"{EVENT_LOOP_ENV}={raw!r} is not one of {', '.join(EVENT_LOOPS)}")
    if choice == "asyncio":
        return "asyncio"
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError as exc:
        if choice == "auto":
            return "asyncio"
        raise ConfigurationError(
            f"{EVENT_LOOP_ENV}=uvloop, but uvloop cannot be imported ({exc}); install it with "
            "pip install 'stalwart[uvloop]' (Linux and macOS), or unset the variable"
        ) from None
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"
