"""The operator commands of ``stalwart``: ``runs`` (filters and paging), ``workers``,
``agents``, over :mod:`stalwart.operations`; and the ``-o`` option every read command takes."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

from stalwart import operations
from stalwart._cli_output import OUTPUTS, Cell, ago, emit, parse_time, span, table, use_color
from stalwart._cli_types import positive_int, seconds
from stalwart._exit_codes import EXIT_OK
from stalwart.operations import RunQuery, RunSummary

if TYPE_CHECKING:
    from stalwart.client import Client

READ_COMMANDS = ("runs", "workers", "agents")
"""The commands this module adds (client commands: they read client settings only)."""


def add_output(p: argparse.ArgumentParser, default: str) -> None:
    """``-o/--output table|json|jsonl`` (the same on every read command)."""
    p.add_argument(
        "-o",
        "--output",
        choices=OUTPUTS,
        default=default,
        help=f"output format (default {default})",
    )


def _status_list(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``runs``, ``workers`` and ``agents`` to the ``stalwart`` subcommands."""
    r = sub.add_parser(
        "runs",
        parents=[common],
        help="list runs, newest first (filters, paging)",
        description="List runs, newest first. Times: 10m, 2h, 1d (ago) or ISO-8601.",
    )
    r.add_argument(
        "--status",
        action="append",
        type=_status_list,
        help="only runs with this status (repeat or comma-separate: running,waiting)",
    )
    r.add_argument("--agent", help="only runs of this agent")
    r.add_argument("--since", type=_time, help="created at or after (10m, 2h, 1d, ISO-8601)")
    r.add_argument("--until", type=_time, help="created at or before (10m, 2h, 1d, ISO-8601)")
    r.add_argument("--search", help="only run ids that contain this text")
    r.add_argument(
        "--placement",
        action="append",
        type=_status_list,
        help="only runs standing so with the workers now (repeat or comma-separate): "
        "owned, awaiting_worker, queued, passivated, ended",
    )
    r.add_argument("--limit", type=positive_int, default=50, help="runs listed (default 50)")
    r.add_argument("--cursor", help="go on after a previous page (its next cursor)")
    r.add_argument(
        "--max-scan",
        type=positive_int,
        default=2000,
        help="most runs read per call when filters match rarely (default 2000)",
    )
    add_output(r, "table")
    w = sub.add_parser("workers", parents=[common], help="live workers: capacity, load, breakers")
    add_output(w, "table")
    a = sub.add_parser(
        "agents", parents=[common], help="agents: pending requests, workers, runs in flight"
    )
    a.add_argument(
        "--window", type=seconds, default=300.0, help="seconds throughput is counted over"
    )
    add_output(a, "table")


def _time(text: str) -> float:
    try:
        return parse_time(text)
    except Exception as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _owner(r: RunSummary) -> tuple[str, str]:
    if r.owner:
        return r.owner, ""
    awaiting = f"- (awaiting build {r.build})" if r.build else "- (awaiting worker)"
    shown = {"awaiting_worker": awaiting, "queued": "- (queued)"}
    text = shown.get(r.placement, "- (passivated)" if r.placement == "passivated" else "-")
    return text, "warn" if r.placement == "awaiting_worker" else "dim"


def render_runs(runs: list[RunSummary]) -> str:
    """The runs table (``stalwart runs``)."""
    now = time.time()
    color = use_color()
    rows: list[list[Cell]] = [
        [
            r.run_id,
            f"{r.agent}@{r.lane}" if r.lane else r.agent,
            (r.status, r.status),
            _owner(r),
            r.epoch_text if r.epoch else "-",
            ago(r.created_at, now),
            span(r.duration) if r.created_at else "-",
            str(r.journal_entries),
            f"{r.error_type}: {r.error}" if r.error_type else r.error,
        ]
        for r in runs
    ]
    headers = ["RUN ID", "AGENT", "STATUS", "OWNER", "EPOCH", "CREATED", "DURATION", "ENTRIES"]
    return table([*headers, "ERROR"], rows, right=(4, 6, 7), color=color)


async def cmd_runs(args: argparse.Namespace, client: Client) -> int:
    """``stalwart runs [--status S] [--agent A] [--since T] ... [-o FORMAT]``."""
    statuses = [s for group in args.status or [] for s in group] or None
    page = await operations.list_runs(
        client,
        RunQuery(
            status=statuses,
            agent=args.agent,
            since=args.since,
            until=args.until,
            search=args.search,
            placement=[p for group in args.placement or [] for p in group] or None,
            limit=args.limit,
            cursor=args.cursor,
            max_scan=max(args.max_scan, args.limit),
        ),
    )
    emit(page.runs, args.output, render_runs, whole=page)
    if page.next_cursor and args.output != "json":  # json has it as next_cursor
        print(f"next page: --cursor {page.next_cursor}", file=sys.stderr)
    return EXIT_OK


def render_workers(views: list[operations.WorkerView]) -> str:
    """The workers table (``stalwart workers``)."""
    now = time.time()
    color = use_color()
    rows: list[list[Cell]] = []
    for w in views:
        breakers = ", ".join(f"{k}={v}" for k, v in sorted(w.breakers.items()))
        state = ("draining", "warn") if w.draining else ("serving", "completed")
        age = (span(now - w.heartbeat_at, whole=True), "warn" if w.heartbeat_age > 10 else "")
        rows.append(
            [
                w.worker_id, w.host, str(w.pid), state, str(w.capacity), str(w.active),
                str(w.free), age, w.version + (f" ({w.build})" if w.build else ""),
                _agents_cell(w.agents), (breakers or "-", "open" if breakers else "dim"),
            ]
        )  # fmt: skip
    headers = ["WORKER", "HOST", "PID", "STATE", "CAPACITY", "ACTIVE", "FREE", "HEARTBEAT"]
    headers += ["VERSION", "AGENTS", "BREAKERS"]
    return table(headers, rows, right=(2, 4, 5, 6, 7), color=color)


def _agents_cell(agents: list[str]) -> str:
    # A worker may serve dozens of agents: the table says how many (json lists them).
    text = ",".join(agents)
    return text if len(text) <= 40 else f"{len(agents)} agents"


async def cmd_workers(args: argparse.Namespace, client: Client) -> int:
    """``stalwart workers [-o FORMAT]``."""
    emit(await operations.workers(client), args.output, render_workers)
    return EXIT_OK


def render_agents(views: list[operations.AgentView]) -> str:
    """The agents table (``stalwart agents``)."""
    rows: list[list[Cell]] = [
        [
            a.agent, a.lane or "default", str(a.pending), str(a.num_ack_pending),
            str(len(a.workers)), str(sum(a.in_flight.values())), str(a.completed),
            str(a.failed), f"{a.throughput:.1f}", a.consumer or "-",
        ]
        for a in views
    ]  # fmt: skip
    headers = ["AGENT", "LANE", "PENDING", "DELIVERED", "WORKERS", "IN FLIGHT", "COMPLETED"]
    headers += ["FAILED", "PER MIN", "CONSUMER"]
    return table(headers, rows, right=range(2, 9), color=use_color())


async def cmd_agents(args: argparse.Namespace, client: Client) -> int:
    """``stalwart agents [--window S] [-o FORMAT]``."""
    emit(await operations.agents(client, window=args.window), args.output, render_agents)
    return EXIT_OK
