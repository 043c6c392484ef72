"""Stalwart refuses a nats-server older than 2.11, whose lack of per-message TTL would make
leases permanent. Runs against a private instance of an old binary (Debian ships 2.9.10)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from stalwart import Client, ServerVersionError
from stalwart.broker import connect
from stalwart.testing import (
    MIN_NATS_VERSION,
    NatsServer,
    ServerError,
    nats_server_version,
)
from tests.conftest import ROOT

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.conftest import Servers

SHARED_NATS_PORT = 4222


def _old_nats_server() -> tuple[str, tuple[int, int, int]] | None:
    candidates = ["/usr/sbin/nats-server"]
    candidates += [str(Path(d) / "nats-server") for d in os.get_exec_path()]
    seen: set[str] = set()
    for path in candidates:
        real = os.path.realpath(path)
        if real in seen or not (os.path.isfile(path) and os.access(path, os.X_OK)):
            continue
        seen.add(real)
        try:
            version = nats_server_version(path)
        except ServerError:
            continue
        if version < MIN_NATS_VERSION:
            return path, version
    return None


class OldNats:
    def __init__(self, server: NatsServer, version: tuple[int, int, int]) -> None:
        self.server = server
        self.version = version
        self.url = server.url
        self.short = f"{version[0]}.{version[1]}"
        self.full = ".".join(map(str, version))


@pytest.fixture(scope="module")
def old_nats() -> Iterator[OldNats]:
    found = _old_nats_server()
    if found is None:
        pytest.skip(
            "no nats-server older than 2.11 on this machine (looked at /usr/sbin/nats-server "
            "and PATH); install Debian's nats-server package to run this test"
        )
    binary, version = found
    server = NatsServer(binary=binary)  # its own free port and temp store, never 4222
    try:
        server.start(timeout=15)
        assert server.port != SHARED_NATS_PORT
        yield OldNats(server, version)
    finally:
        server.stop()


async def test_connect_refuses_old_server(old_nats: OldNats) -> None:
    with pytest.raises(ServerVersionError) as info:
        await connect(old_nats.url, connect_timeout=5)
    msg = str(info.value)
    assert old_nats.short in msg
    assert old_nats.full in msg
    assert "2.11" in msg
    assert old_nats.url in msg


async def test_client_connect_refuses_old_server(old_nats: OldNats, servers: Servers) -> None:
    with pytest.raises(ServerVersionError) as info:
        await Client.connect(nats_url=old_nats.url, redis_url=servers.redis_url)
    assert old_nats.short in str(info.value)
    assert "2.11" in str(info.value)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STALWART_")}
    env["STALWART_LOG_FORMAT"] = "json"
    return env


async def _run(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "stalwart",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(),
        cwd=ROOT,
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(
            f"stalwart {' '.join(args)} kept running against an old server"
        ) from None
    assert proc.returncode is not None
    return proc.returncode, err.decode()


@pytest.mark.parametrize(
    "command",
    [["submit", "fast", "1"], ["worker", "tests.apps:app"], ["supervisor"]],
    ids=lambda c: c[0],
)
async def test_cli_refuses_old_server(
    old_nats: OldNats, servers: Servers, namespace: str, command: list[str]
) -> None:
    code, err = await _run(
        *command,
        "--nats-url",
        old_nats.url,
        "--redis-url",
        servers.redis_url,
        "--namespace",
        namespace,
    )
    assert code != 0, err
    assert "ServerVersionError" in err, err
    assert old_nats.short in err, err
    assert "2.11" in err, err
    assert "Traceback" not in err, err
