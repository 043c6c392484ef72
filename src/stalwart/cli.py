"""The ``stalwart`` command. It parses arguments and calls library functions."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import signal
import sys
from typing import TYPE_CHECKING, Any

import msgspec

from stalwart import observability
from stalwart._logging import configure_logging
from stalwart.actors import App, Worker
from stalwart.client import Client
from stalwart.config import Settings
from stalwart.errors import ConfigurationError, InvalidRequestError, StalwartError
from stalwart.supervisor import Supervisor

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable


def load_app(path: str) -> App:
    """Import ``module:attribute`` and return the :class:`App` it names."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigurationError(f"APP must look like 'package.module:app', got {path!r}")
    sys.path.insert(0, ".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import {module_name!r}: {exc}") from exc
    app = getattr(module, attr, None)
    if not isinstance(app, App):
        raise ConfigurationError(f"{path!r} is not a stalwart.App (got {type(app).__name__})")
    return app


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(
        nats_url=args.nats_url,
        redis_url=args.redis_url,
        namespace=args.namespace,
        lease_ttl=args.lease_ttl,
        concurrency=getattr(args, "concurrency", None),
        worker_id=getattr(args, "worker_id", None),
    )


async def _serve(settings: Settings, make: Callable[[Settings], Any]) -> None:
    """Run a worker or supervisor until SIGTERM/SIGINT, starting embedded servers if needed."""
    from stalwart._local import embedded_if_needed

    async with embedded_if_needed(settings) as resolved:
        service = make(resolved)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, service.stop)
        await service.run()


async def _client_call(args: argparse.Namespace, fn: Callable[[Client], Awaitable[int]]) -> int:
    from stalwart._local import resolve_client_settings

    client = await Client.connect(settings=resolve_client_settings(_settings(args)))
    try:
        return await fn(client)
    finally:
        await client.close()


def _print(obj: Any) -> None:
    print(json.dumps(msgspec.to_builtins(obj), default=str))


def _record_view(record: Any) -> dict[str, Any]:
    out = msgspec.structs.asdict(record)
    out.pop("input", None)
    out["result"] = record.decode_result()
    return out


async def cmd_submit(args: argparse.Namespace, client: Client) -> int:
    """``stalwart submit AGENT INPUT_JSON``."""
    try:
        value = json.loads(args.input)
    except (json.JSONDecodeError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise InvalidRequestError(
            f"INPUT_JSON is not valid JSON ({exc}): {args.input[:200]!r}"
        ) from None
    handle = await client.submit(args.agent, value, run_id=args.run_id)
    if not args.wait:
        print(handle.run_id)
        return 0
    result = await handle.result(timeout=args.timeout)
    _print({"run_id": handle.run_id, "result": result})
    return 0


async def cmd_status(args: argparse.Namespace, client: Client) -> int:
    """``stalwart status RUN_ID``."""
    _print(_record_view(await client.handle(args.run_id).status()))
    return 0


async def cmd_events(args: argparse.Namespace, client: Client) -> int:
    """``stalwart events RUN_ID [--follow]``."""
    async for event in client.handle(args.run_id).events(follow=args.follow):
        _print(event)
    return 0


async def cmd_runs(args: argparse.Namespace, client: Client) -> int:
    """``stalwart runs``."""
    for r in await client.runs(args.limit):
        print(f"{r.run_id}  {r.agent:<20} {r.status:<10} epoch={r.epoch} worker={r.worker}")
    return 0


async def cmd_history(args: argparse.Namespace, client: Client) -> int:
    """``stalwart history RUN_ID [--json]``."""
    history = await client.handle(args.run_id).history()
    if args.json:
        print(json.dumps(observability.history_json(history)))
    else:
        print(observability.format_history(history))
    return 0


async def cmd_replay(args: argparse.Namespace, client: Client) -> int:
    """``stalwart replay RUN_ID APP``: exit 0 when the code matches the journal, 1 if not."""
    app = load_app(args.app)
    report = await client.handle(args.run_id).replay(app, timeout=args.timeout)
    print(json.dumps(msgspec.to_builtins(report)) if args.json else report.render())
    return 0 if report.matched else 1


async def cmd_fork(args: argparse.Namespace, client: Client) -> int:
    """``stalwart fork RUN_ID --at STEP``."""
    handle = await client.fork(args.run_id, at=args.at, new_id=args.new_run_id)
    if not args.wait:
        print(handle.run_id)
        return 0
    _print({"run_id": handle.run_id, "result": await handle.result(timeout=args.timeout)})
    return 0


async def cmd_signal(args: argparse.Namespace, client: Client) -> int:
    """``stalwart signal RUN_ID NAME [PAYLOAD_JSON]``."""
    try:
        payload = json.loads(args.payload) if args.payload is not None else None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise InvalidRequestError(f"PAYLOAD_JSON is not valid JSON ({exc})") from None
    print(await client.handle(args.run_id).signal(args.name, payload))
    return 0


async def cmd_cancel(args: argparse.Namespace, client: Client) -> int:
    """``stalwart cancel RUN_ID``."""
    print(await client.handle(args.run_id).cancel(args.reason))
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stalwart", description=__doc__)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--nats-url", help="NATS URL (env STALWART_NATS_URL)")
    common.add_argument("--redis-url", help="Redis URL (env STALWART_REDIS_URL)")
    common.add_argument("--namespace", help="stream/subject/key prefix (env STALWART_NAMESPACE)")
    common.add_argument(
        "--lease-ttl", type=int, help="lease TTL in seconds (env STALWART_LEASE_TTL)"
    )
    sub = p.add_subparsers(dest="command", required=True)

    w = sub.add_parser("worker", parents=[common], help="serve the agents of APP")
    w.add_argument("app", help="module:attribute of a stalwart.App")
    w.add_argument("--concurrency", type=int, help="runs hosted at once (default 16)")
    w.add_argument("--worker-id", help="worker identity (default host-pid-random)")
    sv = sub.add_parser("supervisor", parents=[common], help="re-place runs whose worker died")
    for service in (w, sv):
        service.add_argument(
            "--metrics-port",
            type=int,
            help="serve Prometheus metrics on this port (env STALWART_METRICS_PORT; 0: off)",
        )
        service.add_argument(
            "--metrics-addr", help="address of the metrics endpoint (default 127.0.0.1)"
        )

    s = sub.add_parser("submit", parents=[common], help="start a run")
    s.add_argument("agent")
    s.add_argument("input", help="input as JSON")
    s.add_argument("--run-id")
    s.add_argument("--wait", action="store_true", help="wait for the result and print it")
    s.add_argument("--timeout", type=float, default=None)
    st = sub.add_parser("status", parents=[common], help="show a run's record")
    st.add_argument("run_id")
    ev = sub.add_parser("events", parents=[common], help="print a run's events")
    ev.add_argument("run_id")
    ev.add_argument("--follow", action="store_true", help="keep following until the run ends")
    r = sub.add_parser("runs", parents=[common], help="list runs, newest first")
    r.add_argument("--limit", type=int, default=50)
    c = sub.add_parser("cancel", parents=[common], help="cancel a run")
    c.add_argument("run_id")
    c.add_argument("--reason", default="cancelled from the CLI")

    h = sub.add_parser("history", parents=[common], help="a run's timeline from its journal")
    h.add_argument("run_id")
    h.add_argument("--json", action="store_true", help="print JSON instead of a table")
    rp = sub.add_parser(
        "replay", parents=[common], help="check new agent code against a run's journal, offline"
    )
    rp.add_argument("run_id")
    rp.add_argument("app", help="module:attribute of a stalwart.App (the code to check)")
    rp.add_argument("--json", action="store_true", help="print the report as JSON")
    rp.add_argument("--timeout", type=float, default=60.0, help="seconds the replay may take")
    fk = sub.add_parser(
        "fork", parents=[common], help="start a new run from a run's journal up to a step"
    )
    fk.add_argument("run_id")
    fk.add_argument("--at", required=True, help="step key (step:plan, model:3) or step name")
    fk.add_argument("--run-id", dest="new_run_id", help="id of the new run (default random)")
    fk.add_argument("--wait", action="store_true", help="wait for the result and print it")
    fk.add_argument("--timeout", type=float, default=None)

    sg = sub.add_parser("signal", parents=[common], help="send a signal to a run")
    sg.add_argument("run_id")
    sg.add_argument("name")
    sg.add_argument("payload", nargs="?", help="payload as JSON")

    d = sub.add_parser("dev", parents=[common], help="servers + supervisor + workers, locally")
    d.add_argument("app")
    d.add_argument("--workers", type=int, default=2)
    demo = sub.add_parser("demo", parents=[common], help="watch a run survive a SIGKILLed worker")
    demo.add_argument("--kill-after", type=int, default=4, help="steps before the SIGKILL")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``stalwart`` command."""
    args = _parser().parse_args(argv)
    configure_logging()
    try:
        _configure_observability(args)
        return asyncio.run(_dispatch(args))
    except KeyboardInterrupt:
        return 130
    except StalwartError as exc:
        print(f"stalwart: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
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

    settings = _settings(args)
    if args.command == "worker":
        app = load_app(args.app)
        await _serve(settings, lambda s: Worker(app, s))
        return 0
    if args.command == "supervisor":
        await _serve(settings, Supervisor)
        return 0
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
        "cancel": cmd_cancel,
        "signal": cmd_signal,
        "history": cmd_history,
        "replay": cmd_replay,
        "fork": cmd_fork,
    }
    handler = handlers[args.command]
    return await _client_call(args, lambda client: handler(args, client))
