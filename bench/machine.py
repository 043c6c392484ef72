"""Versions of everything measured and a description of the machine, for the report."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import stalwart
from stalwart.testing import find_nats_server, find_redis_server

_PACKAGES = [
    "nats-py",
    "redis",
    "hiredis",
    "msgspec",
    "dbos",
    "temporalio",
    "psycopg",
    "matplotlib",
]


def _run(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else ""


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total() -> str:
    try:
        with open("/proc/meminfo") as f:
            kb = int(re.findall(r"MemTotal:\s+(\d+)", f.read())[0])
        return f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, IndexError):
        return "unknown"


def versions() -> dict[str, str]:
    out = {
        "stalwart": stalwart.__version__,
        "python": sys.version.split()[0],
        "nats-server": _run([find_nats_server(), "--version"]),
        "redis-server": _run([find_redis_server(), "--version"]),
    }
    for pkg in _PACKAGES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def machine() -> dict[str, Any]:
    return {
        "cpu": _cpu_model(),
        "nproc": os.cpu_count() or 0,
        "memory": _mem_total(),
        "kernel": platform.release(),
        "os": platform.platform(),
        "loadavg_start": os.getloadavg(),
    }
