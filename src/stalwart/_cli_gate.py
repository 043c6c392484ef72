"""``stalwart replay --recent N --agent A APP``: the deploy gate on the command line."""

from __future__ import annotations

from typing import TYPE_CHECKING

from stalwart._exit_codes import EXIT_DIVERGED, EXIT_OK
from stalwart._json import dumps
from stalwart.errors import InvalidRequestError
from stalwart.operations import replay_recent

if TYPE_CHECKING:
    import argparse

    from stalwart.actors import App
    from stalwart.client import Client


def add_gate_arguments(rp: argparse.ArgumentParser) -> None:
    """The deploy-gate options of the ``replay`` parser."""
    rp.add_argument(
        "--recent",
        type=int,
        metavar="N",
        help="replay the last N completed runs of --agent instead of one run (deploy gate)",
    )
    rp.add_argument("--agent", help="the agent whose runs --recent replays")
    rp.add_argument(
        "--include-running",
        action="store_true",
        help="with --recent: replay runs in flight too (as far as their journals go)",
    )


def gate_targets(args: argparse.Namespace) -> str | None:
    """The APP of a ``--recent`` invocation (None: a single-run replay); checks the usage."""
    positional = [p for p in (args.run_id, args.app) if p is not None]
    if args.recent is None:
        if args.agent is not None or args.include_running:
            raise InvalidRequestError("--agent and --include-running go with --recent N")
        if len(positional) != 2:
            raise InvalidRequestError("usage: stalwart replay RUN_ID APP")
        return None
    if args.agent is None:
        raise InvalidRequestError("--recent needs --agent AGENT")
    if len(positional) != 1:
        raise InvalidRequestError("usage: stalwart replay --recent N --agent AGENT APP")
    app: str = positional[0]
    return app


async def cmd_gate(args: argparse.Namespace, client: Client, app: App) -> int:
    """Replay the recent runs; exit 0 when all match, 1 with the first divergence shown."""
    report = await replay_recent(
        client,
        app,
        args.agent,
        recent=args.recent,
        include_running=args.include_running,
        timeout=args.timeout,
    )
    print(report.render() if args.output == "table" else dumps(report))
    return EXIT_OK if report.passed else EXIT_DIVERGED
