"""Issue #14 item 1: transport security for every process, against real servers.

nats-server is configured for TLS, mutual TLS, nkey and JWT (``.creds``, operator mode)
authentication, redis-server for TLS and mutual TLS; the certificates, seeds and JWTs are made
by the test (``tests/transport_material.py``). For each mode a worker process, a supervisor and
a client complete runs end to end, with the journal appends going down the pipe rather than
the redis-py fallback, and each misconfiguration fails at once, with a message that names the
server, the option and the cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest
import redis.asyncio as aioredis

from stalwart import Client, Settings, Supervisor
from stalwart._local import file_settings_env
from stalwart._transport import redis_target
from stalwart.actors import Worker
from stalwart.cli import EXIT_UNAVAILABLE, EXIT_USAGE
from stalwart.config import load_config_file
from stalwart.errors import ConfigurationError, ServerUnavailableError
from stalwart.testing import NatsServer, RedisServer, ServerTLS, worker_process
from tests.apps import app as test_app
from tests.conftest import ROOT
from tests.helpers import eventually, start_server
from tests.test_cli import _env, run_cli
from tests.transport_material import Material, make_material

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from stalwart.testing import StalwartProcess
    from tests.conftest import Servers

CONNECT_TIMEOUT = 10.0
"""STALWART_CONNECT_TIMEOUT of every process here: a failure must come well before it."""

TEN = 10 * 11 // 2 * 10
"""Result of the ``ten`` agent: steps 1..10, each worth ten times its number."""


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Material:
    return make_material(tmp_path_factory.mktemp("transport"))


@pytest.fixture(scope="module")
def secured(material: Material) -> Iterator[dict[str, NatsServer | RedisServer]]:
    """One server per mode: NATS tls, mtls, nkey, creds; Redis tls, mtls."""
    p = material.path
    tls = ServerTLS(p("server.pem"), p("server.key"), p("ca.pem"))
    mtls = ServerTLS(
        p("server.pem"),
        p("server.key"),
        p("ca.pem"),
        verify_clients=True,
        client_cert_file=p("client.pem"),
        client_key_file=p("client.key"),
    )
    made: dict[str, NatsServer | RedisServer] = {
        "nats-tls": NatsServer(tls=tls),
        "nats-mtls": NatsServer(tls=mtls),
        "nats-nkey": NatsServer(config=material.nkey_config),
        "nats-creds": NatsServer(config=material.operator_config),
        "redis-tls": RedisServer(tls=tls),
        "redis-mtls": RedisServer(tls=mtls),
    }
    try:
        for server in made.values():
            server.start()
        yield made
    finally:
        for server in made.values():
            server.stop()


# -- the modes: (URL, settings) of each --------------------------------------------------------


def _nats(mode: str, secured: dict[str, Any], m: Material) -> tuple[str, dict[str, str]]:
    url = secured[f"nats-{mode}"].url
    return url, {
        "tls": {"nats_tls_ca": m.path("ca.pem")},
        "mtls": {
            "nats_tls_ca": m.path("ca.pem"),
            "nats_tls_cert": m.path("client.pem"),
            "nats_tls_key": m.path("client.key"),
        },
        "nkey": {"nats_nkey_seed": m.path("user.nk")},
        "creds": {"nats_creds": m.path("user.creds")},
    }[mode]


def _redis(mode: str, secured: dict[str, Any], m: Material) -> tuple[str, dict[str, str]]:
    """Redis over TLS with the options in the URL's query (``-url``) or in the settings."""
    server, _, where = mode.partition("-")
    url = secured[f"redis-{server}"].url
    files = {"ssl_ca_certs": m.path("ca.pem")}
    if server == "mtls":
        files |= {"ssl_certfile": m.path("client.pem"), "ssl_keyfile": m.path("client.key")}
    if where == "url":
        query = "&".join(f"{k}={quote(v)}" for k, v in files.items())
        return f"{url}?{query}&ssl_cert_reqs=required&ssl_check_hostname=true", {}
    names = {"ssl_ca_certs": "redis_tls_ca", "ssl_certfile": "redis_tls_cert"}
    names["ssl_keyfile"] = "redis_tls_key"
    return url, {names[k]: v for k, v in files.items()}


def _as_env(fields: dict[str, str]) -> dict[str, str]:
    return {f"STALWART_{k.upper()}": v for k, v in fields.items()}


async def _connections(url: str, settings: Settings) -> int:
    """Connections the Redis at ``url`` has accepted so far (TLS handshakes that failed too)."""
    r = aioredis.Redis.from_pool(aioredis.ConnectionPool(**_pool(url, settings)))
    try:
        return int((await r.info("stats"))["total_connections_received"])
    finally:
        await r.aclose()


def _failed_handshakes(server: RedisServer) -> int:
    """TLS handshakes ``server`` saw fail (it logs each; its connection count omits them)."""
    return server.log_file.read_text().count("Error accepting a client connection")


def _nats_failed_handshakes(server: NatsServer) -> int:
    return server.log_file.read_text().count("TLS handshake error")


def _pool(url: str, settings: Settings) -> dict[str, Any]:
    return redis_target(url, settings).pool_kwargs()


@contextlib.asynccontextmanager
async def _worker(
    settings: Settings, env: dict[str, str], servers: Servers, client: Client
) -> AsyncIterator[StalwartProcess]:
    """A ``stalwart worker`` process configured by ``env`` alone (the TLS settings)."""
    assert settings.nats_url and settings.redis_url
    wid = f"tls-{uuid.uuid4().hex[:6]}"
    # Built in a thread (a temp file), started on the loop thread: a child dies with the
    # thread that spawned it.
    proc = await asyncio.to_thread(
        worker_process,
        "tests.apps:app",
        nats_url=settings.nats_url,
        redis_url=settings.redis_url,
        worker_id=wid,
        namespace=settings.namespace,
        extra_env={
            **env,
            "STALWART_CONNECT_TIMEOUT": str(CONNECT_TIMEOUT),
            "COUNTER_REDIS_URL": servers.redis_url,  # the apps count executions there
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")) if p
            ),
            "STALWART_LOG_FORMAT": "json",
        },
    )
    proc.start()
    try:

        async def registered() -> bool:
            return wid in {w.worker_id for w in await client.broker.workers()}

        await eventually(
            registered, timeout=30, message=lambda: f"worker did not start:\n{proc.log_text()}"
        )
        yield proc
    finally:
        proc.kill()


MODES = [
    pytest.param("tls", "tls-url", id="nats-tls+redis-tls-url"),
    pytest.param("mtls", "mtls-env", id="nats-mtls+redis-mtls-settings"),
    pytest.param("nkey", "tls-env", id="nats-nkey+redis-tls-settings"),
    pytest.param("creds", "mtls-url", id="nats-creds+redis-mtls-url"),
]


def _settings(
    nats_mode: str, redis_mode: str, secured: dict[str, Any], m: Material, namespace: str
) -> tuple[Settings, dict[str, str]]:
    nats_url, nats_fields = _nats(nats_mode, secured, m)
    redis_url, redis_fields = _redis(redis_mode, secured, m)
    fields = nats_fields | redis_fields
    settings = Settings(
        nats_url=nats_url,
        redis_url=redis_url,
        namespace=namespace,
        lease_ttl=2,
        reconcile_interval=0.5,
        connect_timeout=CONNECT_TIMEOUT,
        **fields,
    )
    return settings, _as_env(fields)


@pytest.mark.parametrize(("nats_mode", "redis_mode"), MODES)
async def test_worker_supervisor_and_client_complete_runs(
    nats_mode: str,
    redis_mode: str,
    secured: dict[str, Any],
    material: Material,
    servers: Servers,
    namespace: str,
) -> None:
    settings, env = _settings(nats_mode, redis_mode, secured, material, namespace)
    assert settings.redis_url
    client = await Client.connect(settings=settings)
    supervisor = Supervisor(settings)
    await supervisor.start()
    sup_task = asyncio.create_task(supervisor.run())
    try:
        redis_server = secured[f"redis-{redis_mode.partition('-')[0]}"]
        async with _worker(settings, env, servers, client):
            before = await _connections(settings.redis_url, settings)
            refused_before = _failed_handshakes(redis_server)
            # One run after the other: 30 journal appends, each of which would try (and
            # fail) a TLS handshake of its own if the pipe could not use the options.
            for _ in range(3):
                handle = await client.submit("ten", {})
                assert await handle.result(timeout=30) == TEN
            opened = await _connections(settings.redis_url, settings) - before
            refused = _failed_handshakes(redis_server) - refused_before
        assert refused == 0, f"{refused} failed TLS handshakes: the pipe cannot connect"
        # The pipe's, the pools' of the worker, the supervisor and the client as they grow
        # under load, our INFO connection: a handful, not one per append.
        assert opened < 15, f"{opened} connections for 30 appends"
    finally:
        supervisor.stop()
        await asyncio.wait_for(sup_task, 30)
        await client.close()


async def test_appends_go_down_the_pipe_over_mutual_tls(
    secured: dict[str, Any],
    material: Material,
    servers: Servers,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In process, where the pipe can be asked: one TLS connection, no failed handshake."""
    monkeypatch.setenv("COUNTER_REDIS_URL", servers.redis_url)  # the app counts its steps
    settings, _ = _settings("mtls", "mtls-env", secured, material, namespace)
    refused_before = _failed_handshakes(secured["redis-mtls"])
    nats_refused_before = _nats_failed_handshakes(secured["nats-mtls"])
    client = await Client.connect(settings=settings)
    worker = Worker(test_app, settings)
    await worker.start()
    try:
        handle = await client.submit("ten", {})
        assert await handle.result(timeout=30) == TEN
        pipe = worker.store._runner.pipe
        assert pipe is not None
        assert (pipe.connects, pipe.failed_connects) == (1, 0)
        assert pipe.writes >= 10  # the ten appends at least, down this one connection
        # Nothing along the way (first contacts included) made the server log a failed
        # handshake: no plain-text probing of a TLS port that answers.
        assert _failed_handshakes(secured["redis-mtls"]) == refused_before
        assert _nats_failed_handshakes(secured["nats-mtls"]) == nats_refused_before
    finally:
        worker.stop()
        await worker._shutdown()
        await client.close()


async def test_cli_flags_and_config_file_reach_both_servers(
    secured: dict[str, Any], material: Material, servers: Servers, namespace: str, tmp_path: Path
) -> None:
    """The same settings as flags, and as a TOML file with paths relative to it."""
    settings, env = _settings("mtls", "mtls-env", secured, material, namespace)
    assert settings.nats_url and settings.redis_url
    client = await Client.connect(settings=settings)
    try:
        async with _worker(settings, env, servers, client):
            flags = [
                "--nats-url", settings.nats_url,
                "--redis-url", settings.redis_url,
                "--namespace", namespace,
                "--nats-tls-ca", material.path("ca.pem"),
                "--nats-tls-cert", material.path("client.pem"),
                "--nats-tls-key", material.path("client.key"),
                "--redis-tls-ca", material.path("ca.pem"),
                "--redis-tls-cert", material.path("client.pem"),
                "--redis-tls-key", material.path("client.key"),
            ]  # fmt: skip
            done = await run_cli("submit", "fast", "5", "--wait", *flags, env=_env(tmp_path))
            assert done.code == 0, done
            assert '"result": 18' in done.out  # 5 + 6 + 7

            # The config file sits next to the material: relative paths.
            config = material.dir / f"{namespace}.toml"
            config.write_text(
                f'nats_url = "{settings.nats_url}"\n'
                f'redis_url = "{settings.redis_url}"\n'
                f'namespace = "{namespace}"\n'
                f"connect_timeout = {CONNECT_TIMEOUT}\n"
                'nats_tls_ca = "ca.pem"\nnats_tls_cert = "client.pem"\n'
                'nats_tls_key = "client.key"\nredis_tls_ca = "ca.pem"\n'
                'redis_tls_cert = "client.pem"\nredis_tls_key = "client.key"\n'
            )
            via_flag = await run_cli(
                "submit", "fast", "1", "--wait", "--config", str(config), env=_env(tmp_path)
            )
            assert via_flag.code == 0, via_flag
            via_env = await run_cli("runs", env=_env(tmp_path, STALWART_CONFIG=str(config)))
            assert via_env.code == 0, via_env
            assert via_env.out.count(" fast ") == 2, via_env  # both runs listed
    finally:
        await client.close()


# -- failures: at once, with the reason --------------------------------------------------------

# (id, NATS server, Redis server, settings, URL change, error, words the message must hold).
# "plain" is the session's server; {dir} is the material directory.
FAILURES: list[tuple[str, str, str, dict[str, str], str, type[Exception], list[str]]] = [
    ("nats-tls-without-ca", "tls", "plain", {}, "",
     ServerUnavailableError, ["NATS", "certificate was not accepted", "STALWART_NATS_TLS_CA"]),
    ("nats-tls-wrong-ca", "tls", "plain", {"nats_tls_ca": "{dir}/rogue-ca.pem"}, "",
     ServerUnavailableError, ["NATS", "certificate was not accepted"]),
    ("nats-mtls-without-cert", "mtls", "plain", {"nats_tls_ca": "{dir}/ca.pem"}, "",
     ServerUnavailableError, ["requires a client certificate", "STALWART_NATS_TLS_CERT"]),
    ("nats-mtls-rogue-cert", "mtls", "plain",
     {"nats_tls_ca": "{dir}/ca.pem", "nats_tls_cert": "{dir}/rogue-client.pem",
      "nats_tls_key": "{dir}/rogue-client.key"}, "",
     ServerUnavailableError, ["refused the client certificate", "rogue-client.pem"]),
    ("nats-tls-options-plain-server", "plain", "plain", {"nats_tls_ca": "{dir}/ca.pem"}, "",
     ServerUnavailableError, ["does not require TLS", "plain text"]),
    ("nats-nkey-without-seed", "nkey", "plain", {}, "",
     ServerUnavailableError, ["authentication failed", "STALWART_NATS_NKEY_SEED"]),
    ("nats-nkey-other-user", "nkey", "plain", {"nats_nkey_seed": "{dir}/other-user.nk"}, "",
     ServerUnavailableError, ["authentication failed", "other-user.nk"]),
    ("nats-nkey-no-such-file", "nkey", "plain", {"nats_nkey_seed": "{dir}/missing.nk"}, "",
     ConfigurationError, ["STALWART_NATS_NKEY_SEED", "missing.nk", "no such file"]),
    ("nats-nkey-garbled", "nkey", "plain", {"nats_nkey_seed": "{dir}/garbled.nk"}, "",
     ConfigurationError, ["garbled.nk", "is not an nkey seed"]),
    ("nats-nkey-account-seed", "nkey", "plain", {"nats_nkey_seed": "{dir}/account.nk"}, "",
     ConfigurationError, ["an account key", "not of a user"]),
    ("nats-creds-without-file", "creds", "plain", {}, "",
     ServerUnavailableError, ["authentication failed", "STALWART_NATS_CREDS"]),
    ("nats-creds-without-jwt", "creds", "plain", {"nats_creds": "{dir}/seed-only.creds"}, "",
     ConfigurationError, ["seed-only.creds", "no user JWT block"]),
    ("nats-creds-garbled-jwt", "creds", "plain", {"nats_creds": "{dir}/garbled-jwt.creds"}, "",
     ConfigurationError, ["garbled-jwt.creds", "JWT is garbled"]),
    ("nats-creds-other-seed", "creds", "plain", {"nats_creds": "{dir}/mismatch.creds"}, "",
     ConfigurationError, ["does not belong to the JWT's user"]),
    ("nats-creds-expired", "creds", "plain", {"nats_creds": "{dir}/expired.creds"}, "",
     ConfigurationError, ["expired.creds", "expired at"]),
    ("nats-creds-and-nkey", "creds", "plain",
     {"nats_creds": "{dir}/user.creds", "nats_nkey_seed": "{dir}/user.nk"}, "",
     ConfigurationError, ["not both"]),
    ("nats-ca-no-such-file", "tls", "plain", {"nats_tls_ca": "{dir}/missing.pem"}, "",
     ConfigurationError, ["STALWART_NATS_TLS_CA", "missing.pem", "no such file"]),
    ("nats-ca-garbled", "tls", "plain", {"nats_tls_ca": "{dir}/garbled.pem"}, "",
     ConfigurationError, ["garbled.pem", "not a usable PEM file"]),
    ("nats-key-without-cert", "mtls", "plain",
     {"nats_tls_ca": "{dir}/ca.pem", "nats_tls_key": "{dir}/client.key"}, "",
     ConfigurationError, ["STALWART_NATS_TLS_KEY", "needs both"]),
    ("redis-tls-without-ca", "plain", "tls", {}, "",
     ServerUnavailableError, ["Redis", "certificate was not accepted", "STALWART_REDIS_TLS_CA"]),
    ("redis-plain-url-tls-server", "plain", "tls", {}, "to-plain",
     ServerUnavailableError, ["Redis", "is it a TLS port"]),
    ("redis-tls-url-plain-server", "plain", "plain", {"redis_tls_ca": "{dir}/ca.pem"}, "to-tls",
     ServerUnavailableError, ["Redis", "answers in plain text"]),
    ("redis-mtls-without-cert", "plain", "mtls", {"redis_tls_ca": "{dir}/ca.pem"}, "",
     ServerUnavailableError, ["client certificate", "STALWART_REDIS_TLS_CERT"]),
    ("redis-mtls-rogue-cert", "plain", "mtls",
     {"redis_tls_ca": "{dir}/ca.pem", "redis_tls_cert": "{dir}/rogue-client.pem",
      "redis_tls_key": "{dir}/rogue-client.key"}, "",
     ServerUnavailableError, ["refused the client certificate"]),
    ("redis-tls-options-plain-url", "plain", "plain", {"redis_tls_ca": "{dir}/ca.pem"}, "",
     ConfigurationError, ["STALWART_REDIS_TLS_CA", "not rediss://"]),
    ("redis-unknown-url-option", "plain", "tls", {}, "?ssl_verify_mode=none",
     ConfigurationError, ["unsupported TLS option", "ssl_verify_mode"]),
    ("redis-url-and-settings-disagree", "plain", "tls",
     {"redis_tls_ca": "{dir}/rogue-ca.pem"}, "?ssl_ca_certs=/elsewhere/ca.pem",
     ConfigurationError, ["disagree", "STALWART_REDIS_TLS_CA"]),
    ("redis-cert-no-such-file", "plain", "mtls",
     {"redis_tls_ca": "{dir}/ca.pem", "redis_tls_cert": "{dir}/missing.pem",
      "redis_tls_key": "{dir}/client.key"}, "",
     ConfigurationError, ["client certificate", "missing.pem", "no such file"]),
]  # fmt: skip


def _failure_settings(
    case: tuple[str, str, str, dict[str, str], str, type[Exception], list[str]],
    secured: dict[str, Any],
    material: Material,
    servers: Servers,
) -> Settings:
    _, nats, redis, fields, change, _, _ = case
    nats_url = servers.nats_url if nats == "plain" else secured[f"nats-{nats}"].url
    redis_url = servers.redis_url if redis == "plain" else secured[f"redis-{redis}"].url
    if change == "to-plain":
        redis_url = redis_url.replace("rediss://", "redis://")
    elif change == "to-tls":
        redis_url = redis_url.replace("redis://", "rediss://")
    elif change:
        redis_url += change
    return Settings(
        nats_url=nats_url,
        redis_url=redis_url,
        connect_timeout=CONNECT_TIMEOUT,
        **{k: v.format(dir=material.dir) for k, v in fields.items()},
    )


@pytest.mark.parametrize("case", FAILURES, ids=[c[0] for c in FAILURES])
async def test_misconfiguration_fails_at_once_with_the_reason(
    case: tuple[str, str, str, dict[str, str], str, type[Exception], list[str]],
    secured: dict[str, Any],
    material: Material,
    servers: Servers,
) -> None:
    settings = _failure_settings(case, secured, material, servers)
    started = time.monotonic()
    with pytest.raises(case[5]) as info:
        client = await Client.connect(settings=settings)
        await client.close()
    took = time.monotonic() - started
    message = str(info.value)
    for words in case[6]:
        assert words in message, message
    # Not a connect timeout running out: a reason found at once.
    assert took < CONNECT_TIMEOUT / 2, f"took {took:.2f}s: {message}"
    assert "gave up after" not in message


async def test_cli_reports_transport_failures_with_exit_codes(
    secured: dict[str, Any], material: Material, tmp_path: Path
) -> None:
    nats_url = secured["nats-mtls"].url
    redis_url = f"{secured['redis-tls'].url}?ssl_ca_certs={quote(material.path('ca.pem'))}"
    base = ["runs", "--nats-url", nats_url, "--redis-url", redis_url]
    env = _env(tmp_path, STALWART_CONNECT_TIMEOUT=str(CONNECT_TIMEOUT))
    refused = await run_cli(*base, "--nats-tls-ca", material.path("ca.pem"), env=env)
    assert refused.code == EXIT_UNAVAILABLE, refused
    assert "requires a client certificate" in refused.err
    missing = await run_cli(*base, "--nats-creds", str(tmp_path / "none.creds"), env=env)
    assert missing.code == EXIT_USAGE, missing
    assert "STALWART_NATS_CREDS (--nats-creds)" in missing.err and "no such file" in missing.err
    assert "Traceback" not in refused.err + missing.err


# -- settings: one set of options, from file, environment and flags ----------------------------


def test_config_file_environment_and_flags_in_that_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in [v for v in os.environ if v.startswith("STALWART_")]:
        monkeypatch.delenv(var)
    config = tmp_path / "stalwart.toml"
    config.write_text(
        'namespace = "fromfile"\nlease_ttl = 7\nnats_tls_ca = "certs/ca.pem"\n'
        'redis_tls_cert = "/abs/client.pem"\nnats_url = "tls://nats:4222"\n'
    )
    s = Settings.from_env(config=str(config))
    assert (s.namespace, s.lease_ttl, s.nats_url) == ("fromfile", 7, "tls://nats:4222")
    assert s.nats_tls_ca == str(tmp_path / "certs" / "ca.pem")  # relative to the file
    assert s.redis_tls_cert == "/abs/client.pem"
    monkeypatch.setenv("STALWART_CONFIG", str(config))
    monkeypatch.setenv("STALWART_LEASE_TTL", "9")
    s = Settings.from_env()
    assert (s.namespace, s.lease_ttl) == ("fromfile", 9)  # the environment wins over the file
    s = Settings.from_env(namespace="fromflag", lease_ttl=11)
    assert (s.namespace, s.lease_ttl) == ("fromflag", 11)  # flags win over both
    # A client does not read worker-only settings, from the file either.
    config.write_text("concurrency = 0\n")
    assert Settings.from_env(role="client").concurrency == 16
    with pytest.raises(ConfigurationError, match="concurrency"):
        Settings.from_env(role="worker")


def test_config_file_mistakes_are_errors(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('nats_tls_cafile = "ca.pem"\n')
    with pytest.raises(ConfigurationError, match="did you mean 'nats_tls_ca'"):
        load_config_file(str(config))
    config.write_text('nats_tls_ca = ["ca.pem"]\n')
    with pytest.raises(ConfigurationError, match="must be a string or a number"):
        load_config_file(str(config))
    config.write_text("lease_ttl = \n")
    with pytest.raises(ConfigurationError, match="not valid TOML"):
        load_config_file(str(config))
    with pytest.raises(ConfigurationError, match="cannot read"):
        load_config_file(str(tmp_path / "none.toml"))


def test_one_context_for_redis_py_and_the_pipe(material: Material) -> None:
    """The URL's TLS options leave the URL both clients parse, for one shared context."""
    ca = material.path("ca.pem")
    target = redis_target(f"rediss://:pw@127.0.0.1:6390/2?ssl_ca_certs={quote(ca)}&x=1")
    assert target.ssl_context is not None
    assert "ssl_" not in target.url and "x=1" in target.url
    kwargs = target.pool_kwargs()
    assert kwargs["tls_context"] is target.ssl_context
    assert (kwargs["db"], kwargs["password"]) == (2, "pw")
    plain = redis_target("redis://127.0.0.1:6390/0")
    assert plain.ssl_context is None and "tls_context" not in plain.pool_kwargs()
    # ssl_cert_reqs=none: no verification (as redis-py reads it), so no hostname check.
    loose = redis_target("rediss://127.0.0.1:6390/0?ssl_cert_reqs=none")
    assert loose.ssl_context is not None
    assert loose.ssl_context.check_hostname is False


def test_dev_and_demo_hand_the_transport_settings_to_their_workers() -> None:
    s = Settings(nats_tls_ca="/etc/s/ca.pem", nats_creds="/run/w.creds", redis_tls_key="/k.pem")
    assert file_settings_env(s) == {
        "STALWART_NATS_CREDS": "/run/w.creds",
        "STALWART_NATS_TLS_CA": "/etc/s/ca.pem",
        "STALWART_REDIS_TLS_KEY": "/k.pem",
    }


async def test_reconnects_after_a_nats_restart_with_the_same_credentials(
    material: Material, servers: Servers, namespace: str
) -> None:
    """Mutual TLS and an nkey together; after a restart the client presents both again."""
    p = material.path
    mtls = ServerTLS(
        p("server.pem"),
        p("server.key"),
        p("ca.pem"),
        verify_clients=True,
        client_cert_file=p("client.pem"),
        client_key_file=p("client.key"),
    )
    server = NatsServer(tls=mtls, config=material.nkey_config)
    await start_server(server)
    try:
        settings = Settings(
            nats_url=server.url,
            redis_url=servers.redis_url,
            namespace=namespace,
            connect_timeout=CONNECT_TIMEOUT,
            nats_tls_ca=p("ca.pem"),
            nats_tls_cert=p("client.pem"),
            nats_tls_key=p("client.key"),
            nats_nkey_seed=p("user.nk"),
        )
        client = await Client.connect(settings=settings)
        try:
            nc = client.broker.nc
            server.kill()
            await start_server(server)  # same port, same configuration

            async def reconnected() -> bool:
                return bool(nc.is_connected) and nc.stats["reconnects"] >= 1

            await eventually(reconnected, timeout=20)
            await client.broker.js.account_info()  # JetStream answers on the new connection
        finally:
            await client.close()
    finally:
        server.kill()  # at once, then only the files are left to remove
        server.stop()


def test_secrets_stay_out_of_transport_messages(material: Material) -> None:
    url = "rediss://:pw-s3cret@127.0.0.1:6390/0?ssl_ca_certs=/nowhere/ca.pem&ssl_password=k3y"
    with pytest.raises(ConfigurationError) as info:
        redis_target(url)
    message = str(info.value)
    assert "'/nowhere/ca.pem' (ssl_ca_certs in the URL)" in message and "no such file" in message
    assert "pw-s3cret" not in message and "k3y" not in message
    target = redis_target(
        f"rediss://:pw-s3cret@127.0.0.1:6390/0?ssl_ca_certs={material.path('ca.pem')}"
    )
    assert "pw-s3cret" not in repr(target)
