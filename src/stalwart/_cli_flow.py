"""``stalwart flow``: the flow rules' usage and waiting runs; ``set-limit`` and ``resume``.

See docs/flow-control.md.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import msgspec

from stalwart._exit_codes import EXIT_OK
from stalwart._json import dumps
from stalwart.errors import ConfigurationError
from stalwart.flow import RESUME_SIGNAL, FlowStore, LimitSnapshot, flow_snapshot
from stalwart.flow._breaker_view import breaker_details, detail_line

if TYPE_CHECKING:
    import argparse

    from stalwart.client import Client

__all__ = ["add_parsers", "cmd_flow"]


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    """Add ``flow`` (and its ``set-limit`` and ``resume``) to the ``stalwart`` command."""
    fl = sub.add_parser(
        "flow", parents=[common], help="flow rules: usage, waiting runs, operator limits"
    )
    fl.add_argument("-o", "--output", choices=("text", "json"), default="text")
    # Connection options go before the sub-command (``stalwart flow --namespace x resume r``):
    # the same options on the sub-command's parser would reset them to their defaults.
    what = fl.add_subparsers(dest="flow_command")
    sl = what.add_parser(
        "set-limit",
        help="set a spend limit's USD limit (all workers) and wake the runs waiting on it",
    )
    sl.add_argument("rule")
    sl.add_argument("usd", nargs="?", type=float, help="the new limit in USD")
    sl.add_argument("--clear", action="store_true", help="back to the configured limit")
    rs = what.add_parser(
        "resume",
        help="send flow.resume to the runs waiting on a rule (a held spend goes ahead once)",
    )
    rs.add_argument("rule")
    rs.add_argument("--run", dest="runs", action="append", default=[], help="only this run")


def _text(snaps: list[LimitSnapshot], details: dict[str, list[Any]] | None = None) -> str:
    if not snaps:
        return "no flow rules published (a worker publishes its app's rules when it starts)"
    lines = []
    for s in snaps:
        limits = ", ".join(f"{k}={v:g}" for k, v in s.limit.items())
        lines.append(f"{s.name}  {s.kind}  {' '.join(s.resources)}  limit: {limits or '-'}")
        if s.published_at:
            when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(s.published_at))
            lines.append(f"  published by a worker of app {s.app!r} at {when}")
        if s.kind == "SpendLimit":
            lines.append(f"  period {s.period}")
            for scope, usd in sorted(s.used.items()):
                lines.append(f"  {scope}: ${usd:.4f}")
        elif s.used:
            lines.append("  used: " + ", ".join(f"{k}={v:g}" for k, v in s.used.items()))
        lines += [f"  {detail_line(d)}" for d in (details or {}).get(s.name, [])]
        lines.append(f"  waiting runs: {len(s.waiting)}")
        lines += [f"    {r}" for r in s.waiting[:20]]
        if len(s.waiting) > 20:
            lines.append(f"    ... and {len(s.waiting) - 20} more")
    return "\n".join(lines)


def _json(snap: LimitSnapshot, details: list[Any] | None) -> Any:
    out = msgspec.to_builtins(snap)
    if details:
        out["details"] = msgspec.to_builtins(details)
    return out


async def _resume(client: Client, runs: list[str]) -> int:
    sent = 0
    for run_id in runs:
        try:
            await client.handle(run_id).signal(RESUME_SIGNAL)
            sent += 1
        except Exception as exc:  # a run that ended meanwhile: the others still get theirs
            print(f"{run_id}: not resumed ({type(exc).__name__}: {exc})")
    return sent


async def cmd_flow(args: argparse.Namespace, client: Client) -> int:
    """``stalwart flow [-o json]``, ``stalwart flow set-limit``, ``stalwart flow resume``."""
    snaps = {s.name: s for s in await flow_snapshot(client)}
    command = getattr(args, "flow_command", None)
    if command is None:
        # Shared breakers and retry budgets: their state per resource, under their rule.
        details = await breaker_details(client)
        if args.output == "json":
            print(dumps([_json(s, details.get(s.name)) for s in snaps.values()]))
        else:
            print(_text(list(snaps.values()), details))
        return EXIT_OK
    rule = snaps.get(args.rule)
    if rule is None:
        known = ", ".join(sorted(snaps)) or "none"
        raise ConfigurationError(f"no flow rule {args.rule!r} is published (known: {known})")
    if command == "set-limit":
        if rule.kind != "SpendLimit":
            raise ConfigurationError(f"flow rule {args.rule!r} is a {rule.kind}, not a SpendLimit")
        if args.clear == (args.usd is not None):
            raise ConfigurationError("give either a limit in USD or --clear")
        if args.usd is not None and not (0 <= args.usd < math.inf):
            raise ConfigurationError(f"the limit must be a non-negative number, not {args.usd}")
        store = FlowStore(client.store.redis, client.store.ns)
        await store.set_limit(args.rule, None if args.clear else args.usd)
        # Woken, the waiting runs look again: under the new limit their calls go ahead.
        woken = await _wake(client, rule.waiting)
        print(f"{args.rule}: limit {'cleared' if args.clear else f'${args.usd:g}'}; woke {woken}")
        return EXIT_OK
    runs = [r for r in rule.waiting if not args.runs or r in args.runs] + [
        r for r in args.runs if r not in rule.waiting
    ]
    print(f"{args.rule}: resumed {await _resume(client, runs)} run(s)")
    return EXIT_OK


async def _wake(client: Client, runs: list[str]) -> int:
    """Wake passivated runs without letting a held call through: ``request_resume``."""
    woken = 0
    for run_id in runs:
        record = await client.store.get_run(run_id)
        if record is None or record.status != "waiting":
            continue  # running: it asks again when its in-place wait ends
        await client.broker.request_resume(
            run_id, record.agent, record.epoch, "wake", lane=record.route_lane
        )
        woken += 1
    return woken
