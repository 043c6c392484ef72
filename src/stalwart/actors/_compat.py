"""Compatibility declarations between builds: see :mod:`stalwart.builds._compat` (one
registry, which the worker's routing by build asks)."""

from __future__ import annotations

from stalwart.builds._compat import (
    check_build,
    check_builds,
    compatible,
    compatible_builds,
    declare_app,
    declare_compatible,
    reset,
)

__all__ = [
    "check_build",
    "check_builds",
    "compatible",
    "compatible_builds",
    "declare_app",
    "declare_compatible",
    "reset",
]
