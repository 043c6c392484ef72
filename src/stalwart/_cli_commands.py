"""The client commands of ``stalwart`` (submit, status, events, history, replay, fork,
signal, approve, cancel): each turns parsed arguments into one :class:`~stalwart.client.Client`
call and prints its answer; the read commands as ``-o table|json|jsonl``
(:mod:`stalwart._cli_output`). Argument parsing and dispatch stay in :mod:`stalwart.cli`;
the operator commands (runs, workers, agents) are in :mod:`stalwart._cli_ops`.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from typing import TYPE_CHECKING, Any

import msgspec

from stalwart import observability
from stalwart._cli_gate import cmd_gate, gate_targets
from stalwart._cli_output import Cell, ago, emit, iso, paint, plain, table, use_color
from stalwart._exit_codes import EXIT_DIVERGED, EXIT_NOT_FOUND, EXIT_OK
from stalwart._json import dumps
from stalwart.actors import App
from stalwart.checkpoints._codec import describe_sealed, open_text
from stalwart.checkpoints._runs import describe_epoch
from stalwart.errors import ConfigurationError, InvalidRequestError, PayloadKeyError
from stalwart.operations._owners import lease_holders, placement_of

if TYPE_CHECKING:
    import argparse

    from stalwart.client import Client


def _parse_json(text: str, what: str) -> Any:
    """``text`` as JSON, or an :class:`InvalidRequestError` that says why not."""
    try:
        return json.loads(text)
    except RecursionError:
        raise InvalidRequestError(f"{what} is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and int strings past Python's digit limit
        shown = text if len(text) <= 200 else text[:200] + "..."
        raise InvalidRequestError(f"{what} is not valid JSON ({exc}): {shown!r}") from None


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


def _print(obj: Any) -> None:
    # Always valid JSON: NaN and infinities as "NaN", "Infinity", "-Infinity" (stalwart._json).
    print(dumps(obj))


def _record_view(record: Any) -> dict[str, Any]:
    out = msgspec.structs.asdict(record)
    out.pop("input", None)
    # Encrypted payloads are shown when this process has the key, else as which key they
    # need: the metadata around them is always readable.
    try:
        out["result"] = record.decode_result()
    except PayloadKeyError:
        out["result"] = describe_sealed(record.result)
    out["error"] = open_text(record.error)
    return out


async def cmd_submit(args: argparse.Namespace, client: Client) -> int:
    """``stalwart submit AGENT INPUT_JSON``."""
    value = _parse_json(args.input, "INPUT_JSON")
    handle = await client.submit(
        args.agent,
        value,
        run_id=args.run_id,
        conversation=getattr(args, "conversation", ""),
        on_busy=getattr(args, "on_busy", "queue"),
    )
    if not args.wait:
        print(handle.run_id)
        return EXIT_OK
    return await _wait_and_print(handle, args.timeout)


async def _wait_and_print(handle: Any, timeout: float | None) -> int:
    try:
        result = await handle.result(timeout=timeout)
    except TimeoutError:
        raise TimeoutError(
            f"run {handle.run_id} did not end within {timeout:g}s; it goes on "
            f"(see `stalwart status {handle.run_id}`)"
        ) from None
    _print({"run_id": handle.run_id, "result": result})
    return EXIT_OK


async def cmd_status(args: argparse.Namespace, client: Client) -> int:
    """``stalwart status RUN_ID [-o FORMAT]``: the record, and who owns the run now.

    ``owner`` is the worker holding the run's lease now ("" for nobody), ``placement``
    where the run stands (see :data:`stalwart.operations.RunPlacement`): a run whose
    record says ``running`` while nobody holds its lease shows ``awaiting_worker``.
    """
    record = await client.handle(args.run_id).status()
    view = _record_view(record)
    owners = {} if record.terminal else await lease_holders(client.broker, [record.run_id])
    view["owner"] = owners.get(record.run_id, "")
    view["placement"] = placement_of(record, view["owner"])
    if args.output == "table":
        now = time.time()
        color = use_color()
        rows: list[list[Cell]] = []
        for key, value in view.items():
            text = value if isinstance(value, str) else dumps(value)
            if key.endswith("_at") or key in ("deadline", "wake_at", "wait_deadline"):
                text = f"{iso(value)} ({ago(value, now)})" if value else "-"
            elif key == "epoch":
                text = f"{describe_epoch(value)} ({value})"
            rows.append([key, (text, record.status if key == "status" else "")])
        print(table(["FIELD", "VALUE"], rows, color=color))
    else:  # json and jsonl alike: one object on one line, as status always printed it
        print(dumps(plain(view)))
    return EXIT_OK


async def cmd_events(args: argparse.Namespace, client: Client) -> int:
    """``stalwart events RUN_ID [--follow]`` or ``stalwart events --all [--agent A]
    [--after SEQ] [--follow]``: one event a line (JSON for json and jsonl: a stream has
    no end to close a JSON array at; aligned columns for table)."""
    if args.all == (args.run_id is not None):
        raise InvalidRequestError("give a RUN_ID or --all (not both)")
    if not args.all and (args.agent is not None or args.after):
        raise InvalidRequestError("--agent and --after go with --all")
    if args.all:
        stream = client.events(agent=args.agent, after=args.after, follow=args.follow)
    else:
        handle = client.handle(args.run_id)
        await handle.status()  # an unknown run is an error, not an empty (or endless) stream
        stream = handle.events(follow=args.follow)
    color = use_color()
    async for event in stream:
        if args.output == "table":
            print(_event_line(event, color), flush=True)
        else:
            print(dumps(event), flush=True)
    return EXIT_OK


def _event_line(event: Any, color: bool) -> str:
    # A stream cannot size its columns from content it has not seen: fixed widths, wide
    # enough for the usual values, and a longer value simply pushes the line on.
    kind = event.type.rsplit(".", 1)[-1]
    seq = getattr(event, "seq", 0)
    cells = [
        f"{seq:>8}" if seq else "",
        iso(event.at),
        paint(f"{event.type:<16}", kind, color),
        f"{getattr(event, 'agent', '') or '':<12}",
        event.run_id,
        event.step or "",
        event.worker or "",
    ]
    return "  ".join(c for c in cells if c).rstrip()


async def cmd_history(args: argparse.Namespace, client: Client) -> int:
    """``stalwart history RUN_ID [-o FORMAT | --json]``."""
    history = await client.handle(args.run_id).history()
    if args.output == "table":
        print(observability.format_history(history))
    else:
        print(dumps(observability.history_json(history)))
    return EXIT_OK


async def cmd_replay(args: argparse.Namespace, client: Client) -> int:
    """``stalwart replay RUN_ID APP``: exit 0 when the code matches the journal, 1 if not.

    With ``--recent N --agent A APP``: the deploy gate (:mod:`stalwart._cli_gate`).
    """
    gate_app = gate_targets(args)
    if gate_app is not None:
        return await cmd_gate(args, client, load_app(gate_app))
    app = load_app(args.app)
    report = await client.handle(args.run_id).replay(app, timeout=args.timeout)
    print(report.render() if args.output == "table" else dumps(report))
    return EXIT_OK if report.matched else EXIT_DIVERGED


async def cmd_fork(args: argparse.Namespace, client: Client) -> int:
    """``stalwart fork RUN_ID --at STEP``."""
    handle = await client.fork(args.run_id, at=args.at, new_id=args.new_run_id)
    if not args.wait:
        print(handle.run_id)
        return EXIT_OK
    return await _wait_and_print(handle, args.timeout)


async def cmd_signal(args: argparse.Namespace, client: Client) -> int:
    """``stalwart signal RUN_ID NAME [PAYLOAD_JSON]``."""
    payload = _parse_json(args.payload, "PAYLOAD_JSON") if args.payload is not None else None
    print(await client.handle(args.run_id).signal(args.name, payload))
    return EXIT_OK


async def cmd_approve(args: argparse.Namespace, client: Client) -> int:
    """``stalwart approve RUN_ID [CALL_ID] [--reject] [--message M]``.

    Without CALL_ID: the pending approval requests, one JSON object a line. With it: the
    bound approval (or rejection) is sent, and the signal outcome printed; a call that is
    not pending, has expired or differs from ``--tool`` / ``--args-hash`` is refused
    (``ApprovalRefusedError``, exit 2) and nothing is sent.
    """
    handle = client.handle(args.run_id)
    if args.call_id is None:
        emit(await handle.pending_approvals(), args.output, _render_approvals)
        return EXIT_OK
    answer = handle.reject if args.reject else handle.approve
    print(
        await answer(args.call_id, message=args.message, tool=args.tool, args_hash=args.args_hash)
    )
    return EXIT_OK


async def cmd_cancel(args: argparse.Namespace, client: Client) -> int:
    """``stalwart cancel RUN_ID``: prints the outcome; ``missing`` exits 4."""
    outcome = await client.handle(args.run_id).cancel(args.reason)
    print(outcome)
    return EXIT_NOT_FOUND if outcome == "missing" else EXIT_OK


def _render_approvals(requests: list[Any]) -> str:
    now = time.time()
    rows: list[list[Cell]] = [
        [
            r.call_id,
            r.tool,
            r.args_hash,
            r.signal,
            ago(r.expires_at, now) if r.expires_at else "never",
        ]
        for r in requests
    ]
    return table(["CALL ID", "TOOL", "ARGS HASH", "SIGNAL", "EXPIRES"], rows, color=use_color())
