"""``stalwart console`` (the web console) and ``stalwart retry RUN_ID``."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from stalwart._exit_codes import EXIT_OK
from stalwart.errors import ConfigurationError

if TYPE_CHECKING:
    import argparse
    from collections.abc import Awaitable, Callable

    from stalwart.client import Client
    from stalwart.config import Settings

    ClientCall = Callable[
        [argparse.Namespace, Settings, Callable[[Client], Awaitable[int]]], Awaitable[int]
    ]

COMMANDS = ("console", "retry")
DEFAULT_PORT = 8750
TOKEN_ENV = "STALWART_CONSOLE_TOKEN"


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    """Add ``console`` and ``retry`` to the ``stalwart`` command's subcommands."""
    c = sub.add_parser("console", parents=[common], help="serve the web console")
    c.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    c.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    c.add_argument(
        "--token-file",
        metavar="FILE",
        help=f"file holding the access token (env {TOKEN_ENV}); on loopback without one, "
        "a random token is made and printed in the login URL",
    )
    c.add_argument(
        "--no-token",
        action="store_true",
        help="serve without an access token (loopback addresses only)",
    )
    c.add_argument(
        "--read-only", action="store_true", help="refuse every action (403); hide them in the UI"
    )
    c.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a Host name to answer for besides loopback names (a proxy's; repeatable)",
    )
    c.add_argument(
        "--public-origin",
        metavar="URL",
        help="the origin browsers use when a TLS proxy is in front (https://console.example.com)",
    )
    r = sub.add_parser(
        "retry", parents=[common], help="start a failed, rejected or dead-lettered run again"
    )
    r.add_argument("run_id")
    r.add_argument("--new-run-id", help="the new run's id (default random)")


async def dispatch(args: argparse.Namespace, settings: Settings, client_call: ClientCall) -> int:
    """Run ``console`` or ``retry`` (``client_call`` connects and closes the client)."""
    if args.command == "retry":
        return await client_call(args, settings, lambda client: cmd_retry(args, client))
    return await cmd_console(args, settings, client_call)


async def cmd_retry(args: argparse.Namespace, client: Client) -> int:
    """``stalwart retry RUN_ID``: print the new run's id."""
    print((await client.retry(args.run_id, new_id=args.new_run_id)).run_id)
    return EXIT_OK


def _token(args: argparse.Namespace) -> tuple[str, bool]:
    """The access token and whether it was made here (then the login URL carries it)."""
    from stalwart.console import new_token
    from stalwart.console._auth import is_loopback

    if args.token_file:
        try:
            with open(args.token_file) as f:
                token = f.read().strip()
        except OSError as exc:
            raise ConfigurationError(f"--token-file {args.token_file!r}: {exc}") from None
        if not token:
            raise ConfigurationError(f"--token-file {args.token_file!r} is empty")
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
    loopback = is_loopback(args.host)
    if args.no_token:
        if not loopback:
            raise ConfigurationError(
                f"--no-token is only allowed on a loopback address, not {args.host!r}: anyone "
                f"who reaches it could cancel runs (set {TOKEN_ENV} or --token-file)"
            )
        return "", False
    if token:
        if len(token) < 16:
            raise ConfigurationError("the console's access token must be at least 16 characters")
        return token, False
    if not loopback:
        raise ConfigurationError(
            f"serving the console on {args.host!r} needs an access token "
            f"({TOKEN_ENV} or --token-file)"
        )
    return new_token(), True


def _origin(url: str | None) -> str:
    """``scheme://host[:port]`` of ``url`` ("" for none), or a usage error."""
    if not url:
        return ""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        raise ConfigurationError(
            f"--public-origin must be like https://console.example.com, not {url!r}"
        )
    return f"{parts.scheme}://{parts.netloc}"


async def cmd_console(args: argparse.Namespace, settings: Settings, client_call: ClientCall) -> int:
    """``stalwart console``: serve until SIGINT/SIGTERM."""
    try:
        from stalwart.console import Guard, serve
    except ImportError as exc:
        raise ConfigurationError(
            f"the console needs Starlette and uvicorn ({exc.name} is missing): "
            "pip install 'stalwart[console]'"
        ) from None
    token, made = _token(args)
    guard = Guard(
        token=token,
        bind=args.host,
        read_only=args.read_only,
        allowed_hosts=frozenset(h.lower() for h in args.allowed_host),
        public_origin=_origin(args.public_origin),
    )

    def ready(port: int) -> None:
        host = f"[{args.host}]" if ":" in args.host else args.host
        url = f"http://{host}:{port}/"
        # The token goes in the URL's fragment: browsers never send it to a server or log.
        shown = f"{url}#token={token}" if made else url
        mode = " (read-only)" if args.read_only else ""
        print(f"stalwart console{mode}: {shown}", file=sys.stderr, flush=True)

    async def run(client: Client) -> int:
        await serve(client, guard, args.port, on_ready=ready)
        return EXIT_OK

    return await client_call(args, settings, run)
