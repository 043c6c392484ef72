"""``stalwart builds``: list builds (``-o json``), ``drain BUILD``, ``retire BUILD [--force]``."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

from stalwart._cli_output import OUTPUTS, Cell, ago, emit, table, use_color
from stalwart._exit_codes import EXIT_OK, EXIT_USAGE
from stalwart.operations._builds import BuildView, Refused, builds, drain, retire

if TYPE_CHECKING:
    import argparse

    from stalwart.client import Client

BUILDS_COMMANDS = ("builds",)
"""The commands this module adds (client commands)."""


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``builds`` (and its ``drain`` and ``retire`` actions)."""
    b = sub.add_parser(
        "builds",
        parents=[common],
        help="builds: their workers and runs in flight; drain or retire one",
        description="Without an action: list builds, newest first. docs/deploys.md",
    )
    b.add_argument("-o", "--output", choices=OUTPUTS, default="table", help="output format")
    b.add_argument(
        "builds_action",
        nargs="?",
        choices=("list", "drain", "retire"),
        default="list",
        metavar="ACTION",
        help="list (default); drain BUILD: no new runs go to it (its runs go on); retire "
        "BUILD: refused while runs of it are in flight",
    )
    b.add_argument("build", nargs="?", help="the build to drain or retire")
    b.add_argument(
        "--force",
        action="store_true",
        help="retire with runs in flight: the newest build's workers resume them "
        "(they fail if its code does not replay their journals)",
    )


def render_builds(views: list[BuildView]) -> str:
    """The builds table."""
    now = time.time()
    rows: list[list[Cell]] = []
    for v in views:
        state: Cell = (v.state + (f" -> {v.moved_to}" if v.moved_to else ""), "warn")
        if v.state == "active":
            state = ("active, new runs" if v.new_runs else "active", "completed")
        flying = str(v.in_flight) + (" (awaiting a worker)" if v.awaiting else "")
        rows.append(
            [
                v.build or "(none)", state, ago(v.first_seen, now) if v.first_seen else "-",
                ",".join(v.workers) or "-", (flying, "warn" if v.awaiting else ""),
            ]
        )  # fmt: skip
    headers = ["BUILD", "STATE", "FIRST SEEN", "WORKERS", "IN FLIGHT"]
    return table(headers, rows, right=(4,), color=use_color())


async def cmd_builds(args: argparse.Namespace, client: Client) -> int:
    """``stalwart builds [-o FORMAT]``, ``... drain BUILD``, ``... retire BUILD [--force]``."""
    action = args.builds_action
    if action == "list":
        emit(await builds(client), args.output, render_builds)
        return EXIT_OK
    if not args.build:
        print(f"stalwart builds {action}: name the BUILD (see stalwart builds)", file=sys.stderr)
        return EXIT_USAGE
    try:
        if action == "drain":
            entry = await drain(client, args.build)
        else:
            entry = await retire(client, args.build, force=args.force)
    except Refused as exc:
        print(f"stalwart builds {action}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    moved = f" (its runs go to {entry.moved_to})" if entry.moved_to else ""
    emit([entry], args.output, lambda _: f"build {entry.build}: {entry.state}{moved}")
    return EXIT_OK
