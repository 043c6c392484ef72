"""Validation of the names that end up in NATS subjects, KV keys and Redis keys."""

from __future__ import annotations

import re
import uuid

from stalwart.errors import ConfigurationError, InvalidRequestError

# Run ids become NATS subject tokens and KV keys, whose safe alphabet is this one.
# Dots would split a subject token, so they are excluded.
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def new_run_id() -> str:
    """A fresh random run id."""
    return uuid.uuid4().hex


def check_run_id(run_id: str) -> str:
    """Return ``run_id`` if it is usable, else raise :class:`InvalidRequestError`."""
    if not isinstance(run_id, str) or not _TOKEN.match(run_id):
        raise InvalidRequestError(
            f"invalid run id {run_id!r}: use 1-128 characters from A-Z a-z 0-9 _ -"
        )
    return run_id


def check_agent_name(name: str) -> str:
    """Return ``name`` if it is a usable agent name, else raise :class:`ConfigurationError`."""
    if not isinstance(name, str) or not _TOKEN.match(name):
        raise ConfigurationError(
            f"invalid agent name {name!r}: use 1-128 characters from A-Z a-z 0-9 _ -"
        )
    return name


def check_namespace(ns: str) -> str:
    """Namespaces prefix stream names, subjects and Redis keys."""
    if not re.match(r"^[a-z][a-z0-9_]{0,31}$", ns):
        raise ConfigurationError(
            f"invalid namespace {ns!r}: use 1-32 lowercase letters, digits or _, starting with a letter"
        )
    return ns


DEFAULT_LANE = "default"
"""The name of the default lane in ``--lanes`` (its subject and consumer carry no lane)."""

_LANE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


def check_lane(lane: str) -> str:
    """Return ``lane`` if it is a usable lane name ("" is the default lane), else raise
    :class:`ConfigurationError`."""
    if lane == "" or (isinstance(lane, str) and _LANE.match(lane) and lane != DEFAULT_LANE):
        return lane
    raise ConfigurationError(
        f"invalid lane {lane!r}: use 1-32 characters from a-z 0-9 _ -, starting with a letter "
        f'or digit ({DEFAULT_LANE!r} names the default lane, which is passed as "")'
    )


def parse_lanes(text: str) -> list[str]:
    """The lanes of a ``--lanes`` value: comma-separated, ``default`` for the default lane
    (returned as ""), in the given order without repeats."""
    lanes: list[str] = []
    for part in text.split(","):
        name = part.strip()
        lane = "" if name == DEFAULT_LANE else check_lane(name) if name else None
        if lane is None:
            raise ConfigurationError(f"invalid lanes {text!r}: an empty name between commas")
        if lane not in lanes:
            lanes.append(lane)
    return lanes
