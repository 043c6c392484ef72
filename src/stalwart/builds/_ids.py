"""Build ids and the per-build lanes that route a run's resumes to workers of its build."""

from __future__ import annotations

import hashlib
import re

from stalwart._ids import DEFAULT_LANE
from stalwart.errors import ConfigurationError

_BUILD = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")

BUILD_SEP = "="
"""Between a lane and a build in a build lane: never in a lane or build name, allowed in a
subject token, a consumer name and a KV key."""


def check_build(build: str) -> str:
    """Return ``build`` if it is a usable build id ("" derives one from the app), else raise
    a :class:`ConfigurationError` that says what is allowed."""
    if build == "" or (isinstance(build, str) and _BUILD.fullmatch(build)):
        return build
    raise ConfigurationError(
        f"invalid build {build!r}: use 1-64 characters from A-Z a-z 0-9 _ -, starting with a letter or digit "
        "(or leave it empty to derive it from the app's code)"
    )


def routing_lane(lane: str, build: str) -> str:
    """The lane a run's resume requests go to: ``lane`` itself for a run without a build
    (older runs, never placed yet), else ``<lane>=<build>`` (``default=<build>`` for the
    default lane), a lane only workers of a compatible build pull."""
    if not build:
        return lane
    return f"{lane or DEFAULT_LANE}{BUILD_SEP}{build_token(build)}"


def build_token(build: str) -> str:
    """``build`` as it appears in a lane: itself when it is a usable build id, else a hash
    (``h-<hex>``), so that no id (one with dots, read back from a record) can split or widen
    a subject or a consumer name."""
    if _BUILD.fullmatch(build):
        return build
    return "h-" + hashlib.blake2b(build.encode(), digest_size=10).hexdigest()


def split_lane(lane: str) -> tuple[str, str]:
    """``(lane, build)`` of a lane made by :func:`routing_lane` (build "" for a plain lane;
    lane "" for the default lane)."""
    head, sep, build = lane.partition(BUILD_SEP)
    if not sep:
        return lane, ""
    return ("" if head == DEFAULT_LANE else head), build
