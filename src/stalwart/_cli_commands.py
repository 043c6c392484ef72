"""The client commands of ``stalwart`` (submit, status, events, runs, history, replay, fork,
signal, cancel): each turns parsed arguments into one :class:`~stalwart.client.Client` call and
prints its answer as JSON (or text). Argument parsing and dispatch stay in :mod:`stalwart.cli`.
"""

from __future__ import annotations

import importlib
import json
import sys
from typing import TYPE_CHECKING, Any

import msgspec

from stalwart import observability
from stalwart._exit_codes import EXIT_DIVERGED, EXIT_NOT_FOUND, EXIT_OK
from stalwart._json import dumps
from stalwart.actors import App
from stalwart.checkpoints._codec import describe_sealed, open_text
from stalwart.checkpoints._runs import describe_epoch
from stalwart.errors import ConfigurationError, InvalidRequestError, PayloadKeyError

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
    handle = await client.submit(args.agent, value, run_id=args.run_id)
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
    """``stalwart status RUN_ID``."""
    _print(_record_view(await client.handle(args.run_id).status()))
    return EXIT_OK


async def cmd_events(args: argparse.Namespace, client: Client) -> int:
    """``stalwart events RUN_ID [--follow]``."""
    handle = client.handle(args.run_id)
    await handle.status()  # an unknown run is an error, not an empty (or endless) stream
    async for event in handle.events(follow=args.follow):
        _print(event)
    return EXIT_OK


async def cmd_runs(args: argparse.Namespace, client: Client) -> int:
    """``stalwart runs``."""
    for r in await client.runs(args.limit):
        print(
            f"{r.run_id}  {r.agent:<20} {r.status:<10} epoch={describe_epoch(r.epoch)} worker={r.worker}"
        )
    return EXIT_OK


async def cmd_history(args: argparse.Namespace, client: Client) -> int:
    """``stalwart history RUN_ID [--json]``."""
    history = await client.handle(args.run_id).history()
    if args.json:
        print(dumps(observability.history_json(history)))
    else:
        print(observability.format_history(history))
    return EXIT_OK


async def cmd_replay(args: argparse.Namespace, client: Client) -> int:
    """``stalwart replay RUN_ID APP``: exit 0 when the code matches the journal, 1 if not."""
    app = load_app(args.app)
    report = await client.handle(args.run_id).replay(app, timeout=args.timeout)
    print(dumps(report) if args.json else report.render())
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
        for request in await handle.pending_approvals():
            print(dumps(request))
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
