"""The ``stalwart`` command's exit codes, and the one line it prints for a user error.

Named constants, documented in docs/configuration.md and re-exported by :mod:`stalwart.cli`.
"""

from __future__ import annotations

from stalwart._secrets import mask_urls
from stalwart.errors import (
    RunCancelled,
    RunFailed,
    RunNotFoundError,
    RunRejected,
    ServerUnavailableError,
    StalwartError,
    UnknownAgentError,
)

EXIT_OK = 0
"""Success."""
EXIT_DIVERGED = 1
"""``stalwart replay``: the code diverges from the journal."""
EXIT_USAGE = 2
"""Bad arguments, settings, URLs or request (argparse uses 2 as well)."""
EXIT_RUN_FAILED = 3
"""The run failed, was cancelled or was rejected (``--wait``)."""
EXIT_NOT_FOUND = 4
"""No run with that id (or no worker for that agent)."""
EXIT_UNAVAILABLE = 5
"""NATS or Redis could not be reached within ``STALWART_CONNECT_TIMEOUT``."""
EXIT_TIMEOUT = 6
"""``--timeout`` passed before the run (or the replay) ended; the run goes on."""
EXIT_INTERRUPTED = 130
"""Ctrl-C."""


def exit_code_for(exc: BaseException) -> int | None:
    """The exit code for a user-facing error, or None for an unexpected one (a bug)."""
    if isinstance(exc, RunNotFoundError | UnknownAgentError):
        return EXIT_NOT_FOUND
    if isinstance(exc, RunFailed | RunCancelled | RunRejected):
        return EXIT_RUN_FAILED
    if isinstance(exc, ServerUnavailableError):
        return EXIT_UNAVAILABLE
    if isinstance(exc, TimeoutError):
        return EXIT_TIMEOUT
    if isinstance(exc, StalwartError):
        return EXIT_USAGE
    return None


def error_message(exc: BaseException) -> str:
    """One line for stderr, credentials masked. Never raises."""
    try:
        if isinstance(exc, TimeoutError):
            text = str(exc) or "timed out"
        else:
            text = f"{type(exc).__name__}: {exc}"
        return "stalwart: " + mask_urls(text)
    except Exception:  # an exception whose str() raises: still say something
        return f"stalwart: {type(exc).__name__}"
