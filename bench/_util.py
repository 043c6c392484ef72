"""Statistics, process probes and small helpers shared by every measurement."""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import signal
import statistics
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

DASH = "\u2013"
"""En dash, for ``min-max`` ranges."""

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
"""The repository root (``bench/`` is directly below it)."""


# --------------------------------------------------------------------------- statistics


def summary(values: Sequence[float]) -> dict[str, Any]:
    """Median, min, max, p90/p99 and the raw values of a sample (JSON-friendly)."""
    vals = sorted(float(v) for v in values)
    if not vals:
        return {"n": 0, "median": math.nan, "min": math.nan, "max": math.nan, "values": []}
    return {
        "n": len(vals),
        "median": statistics.median(vals),
        "min": vals[0],
        "max": vals[-1],
        "p90": percentile(vals, 90),
        "p99": percentile(vals, 99),
        "values": vals,
    }


def percentile(values: Sequence[float], p: float) -> float:
    """Linear-interpolated percentile (numpy's default) of ``values``."""
    vals = sorted(values)
    if not vals:
        return math.nan
    k = (len(vals) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return vals[lo] + (vals[hi] - vals[lo]) * (k - lo)


def fmt(s: dict[str, Any] | None, scale: float = 1.0, digits: int = 2, unit: str = "") -> str:
    """``median [min-max]`` (en dash) of a summary, multiplied by ``scale``."""
    if not s or not s.get("n"):
        return "n/a"
    f = f"{{:.{digits}f}}"
    med, lo, hi = (f.format(s[k] * scale) for k in ("median", "min", "max"))
    if s["n"] == 1:
        return f"{med}{unit} (n=1)"
    return f"{med}{unit} [{lo}{DASH}{hi}]"


def ratio_summary(num: Sequence[float], den: Sequence[float]) -> dict[str, Any]:
    """Ratios of paired repetitions (same round of the same run), summarised."""
    pairs = [a / b for a, b in zip(num, den, strict=False) if b > 0]
    return summary(pairs)


# --------------------------------------------------------------------------- processes


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process used so far (0.0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    # After the ")" the fields start at field 3 (state): utime is field 14, stime 15.
    return (int(fields[11]) + int(fields[12])) / ticks


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores (``/proc/stat``)."""
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
    total = sum(vals[:8])
    return (total - idle) / ticks, total / ticks


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, in bytes (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


_PRCTL = _load_prctl()


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGKILL when this process dies (Linux)."""
    prctl, parent = _PRCTL, os.getpid()
    if prctl is None:
        return None

    def preexec() -> None:
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG; after any setuid, which clears it
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def kill_pid(pid: int, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to ``pid``, ignoring a process that is already gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


# --------------------------------------------------------------------------- misc


@dataclass
class Clock:
    """Wall-clock and monotonic time taken together (events carry wall-clock ``at``)."""

    wall: float
    mono: float

    @classmethod
    def now(cls) -> Clock:
        return cls(time.time(), time.monotonic())


def log(msg: str) -> None:
    """Progress line on stderr (stdout stays free for the summary)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def bench_env() -> dict[str, str]:
    """Environment for child processes: ``bench`` importable, logs quiet."""
    path = os.environ.get("PYTHONPATH", "")
    return {"PYTHONPATH": ROOT + (os.pathsep + path if path else "")}


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and every live descendant (PostgreSQL forks a backend per
    connection). Descendants that already exited are not counted."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += cpu_seconds(p)
        todo += children.get(p, [])
    return total
