"""Builds: which code a worker runs, and routing each run to workers of the build that
started it (see docs/deploys.md).

Every worker has a build id (setting ``build``, else derived from its app's code). A run
records the build that first placed it; its resume requests go to a per-build lane that
only workers of a compatible build pull, and new runs go to the newest active build.
"""

from __future__ import annotations

from stalwart.builds._compat import compatible, compatible_builds, declare_compatible
from stalwart.builds._derive import derive_build
from stalwart.builds._ids import check_build, routing_lane, split_lane
from stalwart.builds._registry import BuildEntry, BuildRegistry, BuildState

__all__ = [
    "BuildEntry",
    "BuildRegistry",
    "BuildState",
    "check_build",
    "compatible",
    "compatible_builds",
    "declare_compatible",
    "derive_build",
    "routing_lane",
    "split_lane",
]
