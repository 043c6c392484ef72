"""Where a worker spends its time: ``py-spy`` samples, summarised by function.

``py-spy record --format raw`` writes collapsed stacks (``frame;frame;... count``); this
module runs it against a worker process and ranks functions by self time (samples where
the function is on top) and by inclusive time (samples where it is anywhere on the stack).
An asyncio program's stacks start at the event loop, so inclusive time of a coroutine
counts only the stretches it runs between awaits: exactly its CPU cost.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<fn>.+?) \((?P<file>[^:()]+)(?::\d+)?\)$")


def find_py_spy() -> str | None:
    """``py-spy`` next to this Python (``pip install py-spy``), or on PATH."""
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def _frame_key(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    file = m["file"]
    for marker in ("site-packages/", "src/", "lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
    return f"{m['fn']} ({file})"


_AREAS = [
    ("redis-py (client, pool, parser)", ("redis/",)),
    ("nats-py (publish, flusher, parser)", ("nats/",)),
    ("asyncio + sockets (event loop, I/O)", ("asyncio/", "selectors", "socket", "ssl")),
    ("typing (type-hint resolution)", ("typing",)),
    ("msgspec / json (codecs)", ("msgspec", "json/")),
    ("structlog (logging)", ("structlog",)),
    ("stalwart", ("stalwart/",)),
]

_PHASES = [
    ("journal append (RunJournal.append)", "RunJournal.append "),
    ("journal pipe replies (_Protocol.data_received)", "_Protocol.data_received "),
    ("event queued (EventPublisher.publish)", "EventPublisher.publish "),
    ("event batch sent (EventPublisher.send_queued)", "EventPublisher.send_queued "),
    ("event acks (EventPublisher._on_ack)", "EventPublisher._on_ack "),
    ("step result type (_result_type)", "_result_type "),
    ("fingerprint", "fingerprint "),
    ("placement (Worker._place)", "Worker._place "),
    ("journal read (CheckpointStore.read_journal)", "CheckpointStore.read_journal "),
    ("replayed and live steps in agent code (RunContext.step)", "RunContext.step "),
    ("journal load on placement (RunActor._load)", "RunActor._load "),
    ("finish (RunActor._finish)", "RunActor._finish "),
    ("lease renewal (Worker._renew)", "Worker._renew "),
    ("fetch loop (Worker._fetch_loop)", "Worker._fetch_loop "),
    ("NATS flusher task (Client._flusher)", "Client._flusher "),
    ("NATS read loop (Client._read_loop)", "Client._read_loop "),
]


def _area(frame: str) -> str:
    for name, needles in _AREAS:
        if any(n in frame for n in needles):
            return name
    return "other"


def summarise(collapsed: str, top: int = 25) -> dict[str, Any]:
    """Rank functions of a collapsed-stack profile by self and inclusive share of samples.

    Also groups self time by library (``areas``) and inclusive time by what the worker
    is doing (``phases``: append, event publish, placement, ...).
    """
    self_c: Counter[str] = Counter()
    incl_c: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    phases: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame_key(f) for f in stack.split(";")]
        self_c[frames[-1]] += n
        areas[_area(frames[-1])] += n
        for key in set(frames):
            incl_c[key] += n
        for name, needle in _PHASES:
            if any(f.startswith(needle) for f in frames):
                phases[name] += n
    if not total:
        return {"samples": 0, "self": [], "inclusive": [], "areas": [], "phases": []}

    def rank(c: Counter[str], k: int = top) -> list[tuple[str, float]]:
        return [(key, v / total) for key, v in c.most_common(k)]

    return {
        "samples": total,
        "self": rank(self_c),
        "inclusive": rank(incl_c),
        "areas": rank(areas, 50),
        "phases": rank(phases, 50),
    }


async def record(pid: int, seconds: float, rate: int = 200) -> dict[str, Any]:
    """Sample ``pid`` for ``seconds`` (non-blocking mode: the target is not paused)."""
    exe = find_py_spy()
    if exe is None:
        return {"error": "py-spy is not installed (pip install py-spy)"}
    with tempfile.TemporaryDirectory(prefix="bench-py-spy-") as tmp:
        out = Path(tmp) / "profile.txt"
        proc = await asyncio.create_subprocess_exec(
            exe, "record", "--pid", str(pid), "--duration", str(int(seconds)),
            "--rate", str(rate), "--format", "raw", "--nonblocking", "-o", str(out),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await proc.communicate()
        if proc.returncode != 0 or not out.exists():
            return {"error": f"py-spy failed ({proc.returncode}): {err.decode()[-500:]}"}
        return summarise(out.read_text())
