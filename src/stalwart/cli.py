"""The ``stalwart`` command. It parses arguments and calls library functions.

Exit codes (also in docs/configuration.md): :data:`EXIT_OK` 0, :data:`EXIT_DIVERGED` 1
(``replay`` found a divergence), :data:`EXIT_USAGE` 2 (bad arguments, settings or request),
:data:`EXIT_RUN_FAILED` 3 (the run failed, was cancelled or rejected), :data:`EXIT_NOT_FOUND`
4 (unknown run or agent), :data:`EXIT_UNAVAILABLE` 5 (NATS or Redis unreachable),
:data:`EXIT_TIMEOUT` 6 (``--timeout`` passed first), :data:`EXIT_INTERRUPTED` 130 (Ctrl-C).
A user error prints one ``stalwart: ...`` line on stderr, never a traceback; an unexpected
error (a bug) still shows its traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

import structlog

from stalwart import observability
from stalwart._cli_builds import BUILDS_COMMANDS, cmd_builds
from stalwart._cli_builds import add_parsers as add_builds_parsers
from stalwart._cli_commands import (
    cmd_approve,
    cmd_cancel,
    cmd_events,
    cmd_fork,
    cmd_history,
    cmd_replay,
    cmd_signal,
    cmd_status,
    cmd_submit,
    load_app,
)
from stalwart._cli_completion import add_parser as add_completion_parser
from stalwart._cli_completion import cmd_completion
from stalwart._cli_console import COMMANDS as CONSOLE_COMMANDS
from stalwart._cli_console import add_parsers as add_console_parsers
from stalwart._cli_console import dispatch as dispatch_console
from stalwart._cli_conversations import CONVERSATIONS_COMMANDS, cmd_conversations
from stalwart._cli_conversations import add_parsers as add_conversations_parsers
from stalwart._cli_flow import add_parsers as add_flow_parsers
from stalwart._cli_flow import cmd_flow
from stalwart._cli_gate import add_gate_arguments
from stalwart._cli_ops import READ_COMMANDS, add_output, cmd_agents, cmd_runs, cmd_workers
from stalwart._cli_ops import add_parsers as add_ops_parsers
from stalwart._cli_security import add_parsers as add_security_parsers
from stalwart._cli_security import cmd_provision, cmd_security
from stalwart._cli_stream import COMMANDS as STREAM_COMMANDS
from stalwart._cli_stream import add_parsers as add_stream_parsers
from stalwart._cli_stream import dispatch as dispatch_stream
from stalwart._cli_types import non_negative_int as _non_negative_int
from stalwart._cli_types import port as _port
from stalwart._cli_types import positive_int as _positive_int
from stalwart._cli_types import seconds as _seconds
from stalwart._exit_codes import (
    EXIT_DIVERGED,
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_RUN_FAILED,
    EXIT_TIMEOUT,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    error_message,
    exit_code_for,
)
from stalwart._health import HealthServer, connection_checks
from stalwart._logging import configure_logging
from stalwart._loop import install_event_loop
from stalwart._tasks import cancel_and_wait
from stalwart._version import __version__
from stalwart.actors import Worker
from stalwart.api import serve_api
from stalwart.client import Client
from stalwart.config import Role, Settings
from stalwart.contract._cli import add_parsers as add_contract_parsers
from stalwart.contract._cli import cmd_contract
from stalwart.supervisor import Supervisor

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = [
    "EXIT_DIVERGED",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_RUN_FAILED",
    "EXIT_TIMEOUT",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "error_message",
    "exit_code_for",
    "load_app",
    "main",
]

log = structlog.get_logger("stalwart.cli")

_CLIENT_COMMANDS = (
    "submit", "status", "events", "cancel", "signal", "approve", "history", *READ_COMMANDS,
    *CONSOLE_COMMANDS, *BUILDS_COMMANDS, *STREAM_COMMANDS, *CONVERSATIONS_COMMANDS,
)  # fmt: skip
_ROLES: dict[str, Role] = {"worker": "worker", "supervisor": "supervisor"}


_TRANSPORT_FLAGS = {
    "nats_tls_ca": "CA certificate file (PEM) of the NATS server; turns TLS on",
    "nats_tls_cert": "client certificate file for NATS mutual TLS",
    "nats_tls_key": "private key file of --nats-tls-cert",
    "nats_nkey_seed": "file with the NATS user's nkey seed (SU...)",
    "nats_creds": "NATS .creds file (user JWT and nkey seed)",
    "redis_tls_ca": "CA certificate file (PEM) of the Redis server (rediss:// URL)",
    "redis_tls_cert": "client certificate file for Redis mutual TLS",
    "redis_tls_key": "private key file of --redis-tls-cert",
}
"""Transport-security flags every command takes (docs/security.md): setting -> help."""


def _settings(args: argparse.Namespace) -> Settings:
    # Client commands read only the settings clients use: a worker-only variable in the
    # environment (STALWART_CONCURRENCY=0) must not break them. dev and demo read all.
    role: Role | None = "client" if args.command in _CLIENT_COMMANDS else None
    return Settings.from_env(
        role=_ROLES.get(args.command, role),
        config=args.config,
        **{name: getattr(args, name) for name in _TRANSPORT_FLAGS},
        nats_url=args.nats_url,
        redis_url=args.redis_url,
        namespace=args.namespace,
        lease_ttl=getattr(args, "lease_ttl", None),
        concurrency=getattr(args, "concurrency", None),
        lanes=getattr(args, "lanes", None),
        build=getattr(args, "build", None),
        worker_id=getattr(args, "worker_id", None),
        health_port=getattr(args, "health_port", None),
        health_addr=getattr(args, "health_addr", None),
    )


async def _serve(settings: Settings, make: Callable[[Settings], Any]) -> None:
    """Run a worker or supervisor until SIGTERM/SIGINT, starting embedded servers if needed.

    A signal during start-up (still connecting, say to a NATS that is down) cancels the
    start-up at once; after it, the service drains as usual.
    """
    from stalwart._local import embedded_if_needed

    async with embedded_if_needed(settings) as resolved:
        service = make(resolved)
        health = await _start_health(resolved, service)
        try:
            await _run_service(service, health)
        finally:
            if health is not None:
                await health.close()


async def _run_service(service: Any, health: HealthServer | None) -> None:
    stop = asyncio.Event()

    def on_signal() -> None:
        stop.set()
        if health is not None:
            health.set_draining()  # before the service stops fetching: no new traffic
        service.stop()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    log.info("service.starting", service=type(service).__name__)
    start = asyncio.create_task(service.start())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({start, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not start.done():
        await cancel_and_wait([start], 5.0)
        # Whatever start() had opened before it was cancelled.
        for opened in (getattr(service, "broker", None), getattr(service, "store", None)):
            if opened is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(opened.close(), 5.0)
        log.info("service.stopped_during_startup")
        return
    start.result()  # start-up errors (ServerUnavailableError, ...) are the caller's
    if health is not None:
        health.set_started()
    await service.run()


async def _start_health(settings: Settings, service: Any) -> HealthServer | None:
    """The health endpoints of ``service`` when ``health_port`` is set, listening already.

    Started before the service connects, so ``/livez`` answers during a long start-up
    (connecting to a NATS that is still electing a leader) and the process is not killed.
    """
    if not settings.health_port:
        return None
    health = HealthServer(connection_checks(service), timeout=settings.health_timeout)
    await health.start(settings.health_addr, settings.health_port)
    return health


async def _client_call(
    args: argparse.Namespace, settings: Settings, fn: Callable[[Client], Awaitable[int]]
) -> int:
    from stalwart._local import resolve_client_settings

    if getattr(args, "ignored_lease_ttl", None) is not None:
        log.warning(
            "cli.option_ignored", option="--lease-ttl", reason="client commands hold no leases"
        )

    client = await Client.connect(settings=resolve_client_settings(settings))
    try:
        return await fn(client)
    finally:
        await client.close()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stalwart", description=__doc__)
    p.add_argument("--version", action="version", version=f"stalwart {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--nats-url", help="NATS URL (env STALWART_NATS_URL)")
    common.add_argument("--redis-url", help="Redis URL (env STALWART_REDIS_URL)")
    common.add_argument("--namespace", help="stream/subject/key prefix (env STALWART_NAMESPACE)")
    common.add_argument(
        "--config",
        metavar="FILE",
        help="TOML file of settings (env STALWART_CONFIG); environment and flags override it",
    )
    for name, text in _TRANSPORT_FLAGS.items():
        common.add_argument(
            "--" + name.replace("_", "-"),
            metavar="FILE",
            help=f"{text} (env STALWART_{name.upper()})",
        )
    # Only processes that hold leases offer --lease-ttl. Client commands hold none: they
    # still accept the flag (scripts pass it to every command) but hide it, ignore it and
    # warn, see _client_call.
    leases = argparse.ArgumentParser(add_help=False, parents=[common])
    leases.add_argument(
        "--lease-ttl", type=_positive_int, help="lease TTL in seconds (env STALWART_LEASE_TTL)"
    )
    client_common = argparse.ArgumentParser(add_help=False, parents=[common])
    client_common.add_argument(
        "--lease-ttl", dest="ignored_lease_ttl", type=_positive_int, help=argparse.SUPPRESS
    )
    common = client_common  # the client commands below
    sub = p.add_subparsers(dest="command", required=True)

    w = sub.add_parser("worker", parents=[leases], help="serve the agents of APP")
    w.add_argument("app", help="module:attribute of a stalwart.App")
    w.add_argument("--concurrency", type=_positive_int, help="runs hosted at once (default 16)")
    w.add_argument("--worker-id", help="worker identity (default host-pid-random)")
    w.add_argument(
        "--lanes",
        help="lanes served, comma-separated: 'default' and/or names given to "
        "submit(..., lane=...) (default: 'default')",
    )
    w.add_argument("--build", help="build id (default: derived from the app's code)")
    sv = sub.add_parser("supervisor", parents=[leases], help="re-place runs whose worker died")
    for service in (w, sv):
        service.add_argument(
            "--metrics-port",
            type=_port,
            help="serve Prometheus metrics on this port (env STALWART_METRICS_PORT; 0: off)",
        )
        service.add_argument(
            "--metrics-addr", help="address of the metrics endpoint (default 127.0.0.1)"
        )
        service.add_argument(
            "--health-port",
            type=_port,
            help="serve /livez and /readyz on this port (env STALWART_HEALTH_PORT; 0: off)",
        )
        service.add_argument(
            "--health-addr", help="address of the health endpoints (default 0.0.0.0)"
        )

    s = sub.add_parser("submit", parents=[common], help="start a run")
    s.add_argument("agent")
    s.add_argument("input", help="input as JSON")
    s.add_argument("--run-id")
    s.add_argument("--conversation", default="", help="make the run a turn of this conversation")
    s.add_argument(
        "--on-busy",
        choices=("queue", "reject", "interrupt"),
        default="queue",
        help="while another run of the conversation is going (docs/conversations.md)",
    )
    s.add_argument("--wait", action="store_true", help="wait for the result and print it")
    s.add_argument("--timeout", type=_seconds, default=None, help="seconds --wait waits")
    st = sub.add_parser("status", parents=[common], help="show a run's record")
    st.add_argument("run_id")
    add_output(st, "json")
    ev = sub.add_parser(
        "events", parents=[common], help="print a run's events, or every run's (--all)"
    )
    ev.add_argument("run_id", nargs="?", help="the run (omit with --all)")
    ev.add_argument("--follow", action="store_true", help="keep following (a run's: until it ends)")
    ev.add_argument("--all", action="store_true", help="every run's events, in stream order")
    ev.add_argument("--agent", help="with --all: only this agent's runs")
    ev.add_argument(
        "--after",
        type=_non_negative_int,
        default=0,
        help="with --all: start after this stream sequence (an event's seq; default 0)",
    )
    add_output(ev, "jsonl")
    add_ops_parsers(sub, common)
    c = sub.add_parser("cancel", parents=[common], help="cancel a run")
    c.add_argument("run_id")
    c.add_argument("--reason", default="cancelled from the CLI")

    h = sub.add_parser("history", parents=[common], help="a run's timeline from its journal")
    h.add_argument("run_id")
    add_output(h, "table")
    h.add_argument("--json", action="store_const", const="json", dest="output", help="-o json")
    rp = sub.add_parser(
        "replay", parents=[common], help="check new agent code against a run's journal, offline"
    )
    rp.add_argument("run_id", nargs="?", help="the run to replay (not with --recent)")
    rp.add_argument("app", nargs="?", help="module:attribute of a stalwart.App (the code to check)")
    add_gate_arguments(rp)
    add_output(rp, "table")
    rp.add_argument("--json", action="store_const", const="json", dest="output", help="-o json")
    rp.add_argument("--timeout", type=_seconds, default=60.0, help="seconds the replay may take")
    fk = sub.add_parser(
        "fork", parents=[common], help="start a new run from a run's journal up to a step"
    )
    fk.add_argument("run_id")
    fk.add_argument("--at", required=True, help="step key (step:plan, model:3) or step name")
    fk.add_argument("--run-id", dest="new_run_id", help="id of the new run (default random)")
    fk.add_argument("--wait", action="store_true", help="wait for the result and print it")
    fk.add_argument("--timeout", type=_seconds, default=None, help="seconds --wait waits")

    sg = sub.add_parser("signal", parents=[common], help="send a signal to a run")
    sg.add_argument("run_id")
    sg.add_argument("name")
    sg.add_argument("payload", nargs="?", help="payload as JSON")

    ap = sub.add_parser(
        "approve",
        parents=[common],
        help="list a run's pending tool approvals, or approve/reject one (bound to the call)",
    )
    ap.add_argument("run_id")
    ap.add_argument("call_id", nargs="?", help="the call to answer (omit to list the pending)")
    ap.add_argument("--reject", action="store_true", help="reject the call instead")
    ap.add_argument("--message", help="what the model is told (on a rejection)")
    ap.add_argument("--args-hash", help="refuse unless the pending call has this args_hash")
    ap.add_argument("--tool", help="refuse unless the pending call is of this tool")
    add_output(ap, "jsonl")

    add_security_parsers(sub, common)
    add_completion_parser(sub)
    add_console_parsers(sub, common)
    add_stream_parsers(sub, common)
    add_contract_parsers(sub, common)
    add_flow_parsers(sub, common)
    add_builds_parsers(sub, common)
    add_conversations_parsers(sub, common)

    d = sub.add_parser("dev", parents=[leases], help="servers + supervisor + workers, locally")
    d.add_argument("app")
    d.add_argument("--workers", type=_positive_int, default=2)
    demo = sub.add_parser("demo", parents=[leases], help="watch a run survive a SIGKILLed worker")
    demo.add_argument(
        "--kill-after", type=_positive_int, default=4, help="steps before the SIGKILL"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``stalwart`` command."""
    args = _parser().parse_args(argv)  # a usage error exits 2 (EXIT_USAGE) here
    if args.command in ("dev", "demo") and args.config:
        # Their worker processes read the same file (their flags and environment still win).
        os.environ["STALWART_CONFIG"] = os.path.abspath(args.config)
    try:
        configure_logging()
        _configure_observability(args)
        install_event_loop()
        return asyncio.run(_dispatch(args))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`stalwart events ... | head`): not an error. Point stdout at
        # /dev/null so the interpreter's final flush does not complain again.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:
        code = exit_code_for(exc)
        if code is None:
            raise  # a bug: its traceback is what a bug report needs
        print(error_message(exc), file=sys.stderr)
        return code
    finally:
        observability.shutdown()


def _configure_observability(args: argparse.Namespace) -> None:
    """Tracing from ``STALWART_TRACING`` everywhere; metrics for workers and supervisors."""
    if args.command in ("worker", "supervisor"):
        observability.configure(
            f"stalwart-{args.command}",
            metrics_port=args.metrics_port,
            metrics_addr=args.metrics_addr,
        )
    elif args.command not in ("dev", "demo"):  # those start processes that configure themselves
        observability.configure_tracing("stalwart-cli")


async def _dispatch(args: argparse.Namespace) -> int:
    from stalwart import _local

    if args.command == "security":
        return cmd_security(args)
    if args.command == "completion":
        return cmd_completion(args, _parser())
    if args.command == "contract":
        return cmd_contract(args)
    settings = _settings(args)
    if args.command == "provision":
        return await cmd_provision(args, settings)
    if args.command in CONSOLE_COMMANDS:
        return await dispatch_console(args, settings, _client_call)
    if args.command in STREAM_COMMANDS:
        return await dispatch_stream(args, settings, _client_call)
    if args.command == "worker":
        app = load_app(args.app)
        await _serve(settings, lambda s: Worker(app, s, services=[serve_api]))
        return EXIT_OK
    if args.command == "supervisor":
        await _serve(settings, lambda s: Supervisor(s, services=[serve_api]))
        return EXIT_OK
    if args.command == "dev":
        return await _local.dev(args.app, settings, workers=args.workers)
    if args.command == "demo":
        return await _local.demo(
            settings, kill_after=args.kill_after, lease_ttl_given=args.lease_ttl is not None
        )
    handlers = {
        "submit": cmd_submit,
        "status": cmd_status,
        "events": cmd_events,
        "runs": cmd_runs,
        "workers": cmd_workers,
        "agents": cmd_agents,
        "cancel": cmd_cancel,
        "signal": cmd_signal,
        "approve": cmd_approve,
        "history": cmd_history,
        "replay": cmd_replay,
        "fork": cmd_fork,
        "flow": cmd_flow,
        "builds": cmd_builds,
        "conversations": cmd_conversations,
    }
    handler = handlers[args.command]
    return await _client_call(args, settings, lambda client: handler(args, client))
