"""Which builds may resume which runs: explicit compatibility declarations between builds.

A run is resumed by a worker of the build that started it. A new build whose code can also
replay the journals of an older build (the change is behind ``ctx.patched`` markers, or it
touches nothing journaled) says so: ``App(..., compatible_with=["build-a"])`` or
:func:`declare_compatible`. Declarations are not transitive: a build that declares ``v2``
does not take ``v1`` runs unless it declares ``v1`` too, since it may have dropped a path
that only ``v2`` still had. Routing by build (``stalwart.builds``) asks :func:`compatible`
and :func:`compatible_builds`; ``stalwart replay --recent`` is how to check a declaration.
"""

from __future__ import annotations

import re
import threading
from typing import TYPE_CHECKING, Protocol

from stalwart.errors import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Iterable

_BUILD = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_lock = threading.Lock()
_declared: dict[str, set[str]] = {}
"""worker build -> the older builds whose runs it may resume."""


class _HasCompat(Protocol):
    compatible_with: tuple[str, ...]


def check_build(build: object) -> str:
    """``build`` if it is a usable build id, else a clear :class:`ConfigurationError`.

    1-64 characters of letters, digits, ``_`` and ``-``, starting with a letter or digit:
    build ids are part of NATS subject tokens and consumer names (no ``.``).
    """
    if not isinstance(build, str) or not _BUILD.fullmatch(build):
        raise ConfigurationError(
            "a build id must be 1-64 characters of letters, digits, _ and - starting with a "
            f"letter or digit; got {build!r}"
        )
    return build


def check_builds(builds: Iterable[str]) -> tuple[str, ...]:
    """Every build id of ``builds`` checked (a lone string is refused: it is a typo)."""
    if isinstance(builds, str):
        raise ConfigurationError(
            f"compatible_with takes a list of build ids, not the string {builds!r}"
        )
    return tuple(dict.fromkeys(check_build(b) for b in builds))


def declare_compatible(old_build: str, new_build: str) -> None:
    """Let workers of ``new_build`` resume runs that ``old_build`` started (this process)."""
    old, new = check_build(old_build), check_build(new_build)
    if old != new:
        with _lock:
            _declared.setdefault(new, set()).add(old)


def declare_app(app: _HasCompat, worker_build: str) -> None:
    """Declare ``app.compatible_with`` for a worker of ``worker_build`` serving ``app``."""
    for old in app.compatible_with:
        declare_compatible(old, worker_build)


def compatible(run_build: str, worker_build: str) -> bool:
    """Whether a worker of ``worker_build`` may resume a run that ``run_build`` started.

    The same build, a run older than builds (``run_build == ""``), or a declared pair.
    """
    if run_build == worker_build or not run_build:
        return True
    with _lock:
        return run_build in _declared.get(worker_build, ())


def compatible_builds(worker_build: str) -> set[str]:
    """The builds other than its own whose runs a worker of ``worker_build`` may resume."""
    with _lock:
        return set(_declared.get(worker_build, ())) - {worker_build}


def reset() -> None:
    """Forget every declaration (for tests)."""
    with _lock:
        _declared.clear()
