"""Which run builds a worker of a build may resume: its own, and those declared compatible.

Declarations are process-wide (the app module makes them at import, so every worker of a
build sees the same ones); a worker pulls the build lanes of every build it may resume, so
compatibility is decided by routing, never by a failed replay.
"""

from __future__ import annotations

from stalwart.builds._ids import check_build

_declared: dict[str, set[str]] = {}


def declare_compatible(run_build: str, worker_build: str) -> None:
    """Let workers of ``worker_build`` resume runs started by ``run_build`` (the new code
    replays the old journals: see ``ctx.patched`` in docs/deploys.md)."""
    if not check_build(run_build) or not check_build(worker_build):
        raise ValueError("declare_compatible needs two non-empty build ids")
    _declared.setdefault(worker_build, set()).add(run_build)


def compatible(run_build: str, worker_build: str) -> bool:
    """Whether a worker of ``worker_build`` may resume a run started by ``run_build``: the
    same build, a declared one, or a run without a build (started before builds)."""
    return (
        not run_build or run_build == worker_build or run_build in _declared.get(worker_build, ())
    )


def compatible_builds(worker_build: str) -> set[str]:
    """The builds other than its own whose runs a worker of ``worker_build`` may resume."""
    return set(_declared.get(worker_build, ())) - {worker_build}
