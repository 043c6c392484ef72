"""Serving the console with uvicorn until the process is told to stop."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

import uvicorn

from stalwart.console._app import create_app

if TYPE_CHECKING:
    from collections.abc import Callable

    from stalwart.client import Client
    from stalwart.console._auth import Guard


async def serve(
    client: Client, guard: Guard, port: int, *, on_ready: Callable[[int], None] | None = None
) -> None:
    """Serve the console on ``guard.bind``:``port`` (0: a free port) until SIGINT/SIGTERM.

    ``on_ready`` is called with the port once the socket listens (before the first request).
    """
    family = socket.AF_INET6 if ":" in guard.bind else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((guard.bind, port))
    # Listening before the URL is printed: a browser opened at once queues in the backlog.
    sock.listen(128)
    sock.setblocking(False)
    bound = sock.getsockname()[1]
    config = uvicorn.Config(
        create_app(client, guard),
        log_level="warning",
        # Headers such as Server: uvicorn tell an attacker nothing they need.
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=3,
    )
    server = uvicorn.Server(config)
    if on_ready is not None:
        on_ready(bound)
    await server.serve(sockets=[sock])
