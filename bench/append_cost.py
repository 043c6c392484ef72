"""Server-side cost of the fenced journal append script, before and after a change.

Client-side step timings on a shared machine move by more than a few microseconds from run
to run; Redis's own ``INFO commandstats`` (``usec_per_call`` of EVALSHA) times only the
script inside the server. This runs ``--calls`` appends of each script variant on its own
runs (one ``redis-server`` on loopback), in alternating rounds, and prints µs per call.

Variants: ``current`` (``stalwart.checkpoints._scripts.APPEND``) and, with ``--before REF``,
the APPEND of another git revision of this repository (read with ``git show``).

Run: ``PYTHONPATH=src python -m bench.append_cost --before d4aaed5 [--calls 5000 --rounds 5]``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import uuid

import redis

from stalwart.checkpoints import _scripts
from stalwart.testing import RedisServer


def _script_at(ref: str) -> str:
    """APPEND as the module at ``ref`` spells it (the module is executed in isolation)."""
    fence = subprocess.run(
        ["git", "show", f"{ref}:src/stalwart/checkpoints/_fence.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    scripts = subprocess.run(
        ["git", "show", f"{ref}:src/stalwart/checkpoints/_scripts.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    ns: dict[str, object] = {}
    # Our own source at another revision, run in isolation to read its APPEND.
    exec(compile(fence, "_fence.py", "exec"), ns)
    scripts = scripts.replace("from stalwart.checkpoints._fence import fenced\n", "")
    exec(compile(scripts, "_scripts.py", "exec"), ns)
    return str(ns["APPEND"])


def _round(r: redis.Redis, sha: str, calls: int) -> float:
    run = uuid.uuid4().hex
    record, journal = f"b:{{{run}}}:run", f"b:{{{run}}}:journal"
    r.hset(record, mapping={"epoch": "1", "status": "running"})
    r.xadd(journal, {"d": b"started"}, id="1-0")
    entry = b"x" * 200
    r.config_resetstat()
    for seq in range(2, calls + 2):
        reply = r.evalsha(sha, 2, record, journal, "1", f"{seq}-0", entry, "1.0")
        assert reply[0] == b"ok", reply
    stats = r.info("commandstats")["cmdstat_evalsha"]
    r.delete(record, journal)
    return float(stats["usec_per_call"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--before", help="git revision whose APPEND to compare with")
    p.add_argument("--calls", type=int, default=5000)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    variants = {"current": _scripts.APPEND}
    if args.before:
        variants[args.before] = _script_at(args.before)
    with RedisServer() as server:
        r = redis.Redis(host="127.0.0.1", port=server.port)
        shas = {name: r.script_load(text) for name, text in variants.items()}
        usec: dict[str, list[float]] = {name: [] for name in variants}
        for i in range(args.rounds):
            names = list(variants) if i % 2 == 0 else list(reversed(variants))
            for name in names:
                usec[name].append(_round(r, shas[name], args.calls))
        r.close()
    print(f"EVALSHA usec_per_call (Redis commandstats), {args.calls} appends x {args.rounds}")
    for name, values in usec.items():
        print(
            f"  {name:>10}: median {statistics.median(values):.2f} µs "
            f"[{min(values):.2f}-{max(values):.2f}]"
        )


if __name__ == "__main__":
    main()
