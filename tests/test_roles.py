"""Issue #14 items 2 and 4: least-privilege roles and tenant isolation, on real servers.

One nats-server whose users have exactly the permissions ``stalwart security
nats-permissions`` prints (pasted into its config), and one redis-server whose ACL users are
made from the lines ``stalwart security redis-acl`` prints. Namespace ``ta`` (tenant A) has a
user per role, ``tb`` (tenant B) an admin and a client, ``tc`` a client and is never
provisioned. The admin provisions ``ta`` with ``stalwart provision``; then a worker process, a
supervisor, a client and a viewer, each with only its role's rights (and
``STALWART_PROVISION=off``), run runs end to end, and every refusal the roles promise is
tried and asserted: by the server (a permissions violation, ``NOPERM``), not by Stalwart.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shlex
import time
import uuid
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

import msgspec
import nats
import pytest
import redis.asyncio as aioredis
from redis.exceptions import NoPermissionError

from stalwart import Client, Settings, Supervisor, operations
from stalwart.api import OPERATIONS
from stalwart.broker import Names
from stalwart.checkpoints import _scripts
from stalwart.errors import ConfigurationError, RunCancelled, RunNotFoundError
from stalwart.roles import (
    ROLES,
    nats_permissions,
    redis_acl_rules,
    render_nats_permissions,
    render_redis_acl,
)
from stalwart.testing import NatsServer, RedisServer, worker_process
from tests.conftest import ROOT
from tests.helpers import eventually, execs, owners
from tests.test_cli import _env, run_cli

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from stalwart.testing import StalwartProcess

A, B, C = "ta", "tb", "tc"
USERS = {
    **{f"{A}_{role}": (A, role) for role in ROLES},
    f"{B}_admin": (B, "admin"),
    f"{B}_client": (B, "client"),
    f"{C}_client": (C, "client"),
}
"""User name -> (namespace, role); the password is ``pw-<user>``."""
TEN = 10 * 11 // 2 * 10


def _nats_config() -> str:
    blocks = [render_nats_permissions(role, ns) for ns, role in set(USERS.values())]
    users = ",\n".join(
        f'  {{ user: "{u}", password: "pw-{u}", permissions: '
        f"$STALWART_{ns.upper()}_{role.upper()} }}"
        for u, (ns, role) in USERS.items()
    )
    return "\n".join(blocks) + f"\nauthorization {{\n users = [\n{users}\n ]\n}}\n"


@pytest.fixture(scope="module")
def role_servers() -> Iterator[tuple[NatsServer, RedisServer]]:
    nats_server = NatsServer(config=_nats_config())
    redis_server = RedisServer()
    nats_server.start()
    redis_server.start()
    try:
        yield nats_server, redis_server
    finally:
        nats_server.stop()
        redis_server.stop()


async def _acl_users(redis_server: RedisServer) -> None:
    admin = aioredis.Redis.from_url(redis_server.url)
    try:
        for user, (ns, role) in USERS.items():
            line = render_redis_acl(role, ns, user)
            await admin.execute_command(*shlex.split(line), f">pw-{user}")
    finally:
        await admin.aclose()


def _urls(user: str, servers: tuple[NatsServer, RedisServer]) -> tuple[str, str]:
    nats_server, redis_server = servers
    nats_url = nats_server.url.replace("nats://", f"nats://{user}:pw-{user}@")
    redis_url = redis_server.url.replace("redis://", f"redis://{user}:pw-{user}@")
    return nats_url, redis_url


def _settings(user: str, servers: tuple[NatsServer, RedisServer], **extra: Any) -> Settings:
    nats_url, redis_url = _urls(user, servers)
    ns = USERS[user][0]
    return Settings(
        nats_url=nats_url,
        redis_url=redis_url,
        namespace=ns,
        lease_ttl=2,
        reconcile_interval=0.5,
        connect_timeout=10.0,
        **extra,
    )


@pytest.fixture(scope="module")
async def provisioned(
    role_servers: tuple[NatsServer, RedisServer], tmp_path_factory: pytest.TempPathFactory
) -> tuple[NatsServer, RedisServer]:
    await _acl_users(role_servers[1])
    nats_url, redis_url = _urls(f"{A}_admin", role_servers)
    env = _env(tmp_path_factory.mktemp("provision"))
    args = ("provision", "--app", "tests.apps:app", "--nats-url", nats_url, "--namespace", A)
    first = await run_cli(*args, "--redis-url", redis_url, env=env)
    assert first.code == 0, first
    assert f"stream {A.upper()}_RUNS: created" in first.out
    assert f"consumer {A.upper()}_RUNS/agent_ten: created" in first.out
    again = await run_cli(*args, "--redis-url", redis_url, env=env)
    assert again.code == 0, again
    assert "created" not in again.out and "updated" not in again.out, again.out
    # Changed settings are brought to the existing streams and consumers.
    env_changed = {**env, "STALWART_EVENT_MAX_AGE": "1209600", "STALWART_ACK_WAIT": "45"}
    changed = await run_cli(*args, "--redis-url", redis_url, env=env_changed)
    assert changed.code == 0, changed
    assert f"stream {A.upper()}_EVENTS: updated (max_age 604800.0 -> 1209600.0)" in changed.out
    assert f"consumer {A.upper()}_RUNS/agent_ten: updated (ack_wait 30.0 -> 45.0)" in changed.out
    assert f"stream {A.upper()}_RUNS: unchanged" in changed.out
    return role_servers


class Violations:
    """A raw NATS connection of one user that collects the server's permission errors."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc: Any = None

    async def connect(self, url: str) -> Violations:
        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc))

        self.nc = await nats.connect(url, error_cb=on_error, allow_reconnect=False)
        return self

    async def refused(self, action: str, subject: str) -> None:
        """``action`` ("publish"/"subscribe") on ``subject`` is refused by the server."""
        before = len(self.errors)
        if action == "publish":
            await self.nc.publish(subject, b"forged")
        else:
            await self.nc.subscribe(subject)
        await self.nc.flush()
        verb = "publish" if action == "publish" else "subscription"
        wanted = f'permissions violation for {verb} to "{subject}"'.lower()

        async def seen() -> bool:
            return any(wanted in e.lower() for e in self.errors[before:])

        await eventually(
            seen,
            timeout=5,
            message=lambda: f"{action} {subject} was not refused: {self.errors[before:]}",
        )


@contextlib.asynccontextmanager
async def _worker(
    servers: tuple[NatsServer, RedisServer], client: Client
) -> AsyncIterator[StalwartProcess]:
    nats_url, redis_url = _urls(f"{A}_worker", servers)
    wid = f"role-{uuid.uuid4().hex[:6]}"
    proc = await asyncio.to_thread(
        worker_process,
        "tests.apps:app",
        nats_url=nats_url,
        redis_url=redis_url,
        worker_id=wid,
        namespace=A,
        extra_env={
            "STALWART_PROVISION": "off",
            "COUNTER_REDIS_URL": servers[1].url,  # the test app's own counters
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")) if p
            ),
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


def test_committed_files_are_what_the_command_prints() -> None:
    for role in ROLES:
        nats_file = ROOT / "deploy" / "security" / f"nats-{role}.conf"
        redis_file = ROOT / "deploy" / "security" / f"redis-{role}.acl"
        assert nats_file.read_text() == render_nats_permissions(role, "stalwart"), nats_file
        assert redis_file.read_text() == render_redis_acl(role, "stalwart", f"stalwart-{role}"), (
            redis_file
        )


async def test_an_unprovisioned_namespace_fails_clearly_without_rights(
    role_servers: tuple[NatsServer, RedisServer],
) -> None:
    await _acl_users(role_servers[1])
    # Namespace C was never provisioned and its client may not create anything.
    started = time.monotonic()
    with pytest.raises(ConfigurationError, match="stalwart provision"):
        await Client.connect(settings=_settings(f"{C}_client", role_servers, provision="off"))
    assert time.monotonic() - started < 3, "provision=off must not wait for anything"
    # With the default (auto) it tries to create, is refused, and says so within the
    # JetStream request timeout rather than hanging.
    started = time.monotonic()
    with pytest.raises(ConfigurationError, match=r"not allowed.*stalwart provision"):
        await Client.connect(settings=_settings(f"{C}_client", role_servers))
    assert time.monotonic() - started < 9
    # The server logged the refusal (the end-to-end test below asserts there is none).
    assert any("violation" in line.lower() for line in _nats_log(role_servers[0]))


async def test_each_role_with_only_its_rights_runs_runs_end_to_end(
    provisioned: tuple[NatsServer, RedisServer],
) -> None:
    servers = provisioned
    log_before = len(_nats_log(servers[0]))
    client = await Client.connect(settings=_settings(f"{A}_client", servers, provision="off"))
    viewer = await Client.connect(settings=_settings(f"{A}_viewer", servers, provision="off"))
    supervisor = Supervisor(_settings(f"{A}_supervisor", servers, provision="off"))
    await supervisor.start()
    sup_task = asyncio.create_task(supervisor.run())
    try:
        async with _worker(servers, client) as first:
            done = await client.submit("ten", {})
            assert await done.result(timeout=30) == TEN
            waiting = await client.submit("approval", 7)
            await eventually(
                lambda: _status_is(waiting, "running", "waiting"), timeout=20, message="no wait"
            )
            assert await waiting.signal("approve", {"ok": True}) in ("stored", "woke")
            assert (await waiting.result(timeout=30))["decision"] == {"ok": True}
            to_cancel = await client.submit("approval", 8)
            await eventually(
                lambda: _journaled(client, to_cancel.run_id, 3), timeout=20, message="no step"
            )
            await to_cancel.cancel("changed my mind")
            with pytest.raises(RunCancelled):
                await to_cancel.result(timeout=30)
            # A client may announce on a run's client subject, but an event only workers
            # publish is a forgery there: every reader skips it.
            forged = {"type": "run.failed", "run_id": done.run_id, "at": time.time()}
            await client.broker.js.publish(
                client.broker.names.events_subject(done.run_id, "client", agent="approval"),
                json.dumps(forged).encode(),
            )
            types = [e.type async for e in client.handle(done.run_id).events(follow=False)]
            assert types[0] == "run.accepted" and types[-1] == "run.completed"
            assert "run.failed" not in types

            # A SIGKILLed worker's run is re-placed (by a supervisor with only its rights)
            # on another worker, which replays the journaled step rather than running it.
            survivor = await client.submit("approval", 9)
            await eventually(
                lambda: _journaled(client, survivor.run_id, 3), timeout=20, message="no wait"
            )
            # The probes count a worker's silence only once it has answered them.
            await eventually(
                lambda: _seen(supervisor, first.name),
                timeout=10,
                message=lambda: f"{first.name} never answered a probe",
            )
            first.kill()
            async with _worker(servers, client) as second:
                await eventually(
                    lambda: _placements(client, survivor.run_id, 2),
                    timeout=30,
                    message=lambda: f"not re-placed:\n{second.log_text()}",
                )
                # Found dead by the liveness probe (a publish only supervisors may make,
                # answered on a subject only workers may subscribe to), not by the TTL.
                assert supervisor.liveness is not None and supervisor.liveness.dead == [first.name]
                await survivor.signal("approve", "after the kill")
                assert (await survivor.result(timeout=30))["decision"] == "after the kill"
                # The control API with the same rights: the client submits over NATS
                # alone, the viewer reads the result (the worker answers both).
                via_api = await _api(client, "submit", {"agent": "ten", "input": {}})
                page = await _api(viewer, "result", {"run_id": via_api["run_id"], "wait": 30})
                assert page["status"] == "completed"
                assert json.loads(base64.b64decode(page["data"])) == TEN
            counters = aioredis.Redis.from_url(servers[1].url)
            try:
                assert await execs(counters, survivor.run_id, "step:quote") == 1
            finally:
                await counters.aclose()

            # The viewer reads everything of its namespace...
            seen = viewer.handle(done.run_id)
            assert (await seen.status()).status == "completed"
            assert len((await seen.history()).steps) == 10
            assert [e.type async for e in seen.events(follow=True)][-1] == "run.completed"
            assert done.run_id in {r.run_id for r in await viewer.runs()}
            # ...every run's events, and one agent's followed from a position...
            everything = [e async for e in viewer.events(follow=False)]
            assert {e.run_id for e in everything} >= {done.run_id, survivor.run_id}
            last_ten = [e for e in everything if e.agent == "ten"][-1]
            followed = viewer.events(agent="ten", after=last_ten.seq - 1)
            first = await asyncio.wait_for(anext(followed), 10)  # type: ignore[arg-type]
            assert first == last_ten
            await followed.aclose()  # type: ignore[attr-defined]
            # ...the operations read model too (owners from the leases, consumers' backlog)
            page = await operations.list_runs(viewer, operations.RunQuery(limit=100))
            assert done.run_id in {r.run_id for r in page.runs}
            assert (await operations.run_detail(viewer, done.run_id)).result == TEN
            assert {"ten", "approval"} <= {a.agent for a in await operations.agents(viewer)}
            await operations.workers(viewer)
            # ...and changes nothing: Redis refuses its writes.
            with pytest.raises(NoPermissionError):
                await viewer.submit("ten", {})
            with pytest.raises(NoPermissionError):
                await viewer.handle(waiting.run_id).cancel()
            with pytest.raises(NoPermissionError):
                await viewer.handle(to_cancel.run_id).signal("approve", 1)
    finally:
        supervisor.stop()
        await asyncio.wait_for(sup_task, 30)
        await viewer.close()
        await client.close()
    # Nobody was refused anything along the way: the roles' permissions are enough.
    refused = [line for line in _nats_log(servers[0])[log_before:] if "violation" in line.lower()]
    assert not refused, refused


async def _api(client: Client, op: str, body: dict[str, Any]) -> Any:
    reply = await client.broker.nc.request(
        client.broker.names.api_subject(op),
        json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        timeout=40,
    )
    assert "Stalwart-Error" not in (reply.headers or {}), reply.data
    return json.loads(reply.data)


def _nats_log(server: NatsServer) -> list[str]:
    return server.log_file.read_text(errors="replace").splitlines()


async def _seen(supervisor: Supervisor, worker_id: str) -> bool:
    return supervisor.liveness is not None and worker_id in supervisor.liveness.seen


async def _placements(client: Client, run_id: str, n: int) -> bool:
    return len(owners(await client.store.read_journal(run_id))) >= n


async def _status_is(handle: Any, *statuses: str) -> bool:
    return (await handle.status()).status in statuses


async def _journaled(client: Client, run_id: str, at_least: int) -> bool:
    return len(await client.store.read_journal(run_id)) >= at_least


async def test_a_client_cannot_write_leases_forge_advisories_or_touch_another_namespace(
    provisioned: tuple[NatsServer, RedisServer],
) -> None:
    servers = provisioned
    nats_url, redis_url = _urls(f"{A}_client", servers)
    v = await Violations().connect(nats_url)
    r = aioredis.Redis.from_url(redis_url)
    try:
        # NATS: leases, heartbeats, the agent registry, advisories, the topology.
        await v.refused("publish", f"$KV.{A.upper()}_LEASES.run.someone")
        await v.refused("publish", f"$KV.{A.upper()}_LEASES.supervisor.leader")
        await v.refused("publish", f"$KV.{A.upper()}_WORKERS.fake-worker")
        await v.refused("publish", f"$KV.{A.upper()}_AGENTS.fake")
        advisory = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{A.upper()}_RUNS.agent_ten"
        await v.refused("publish", advisory)
        await v.refused("subscribe", advisory)
        await v.refused("publish", f"{A}.rejected.ten")
        # Events only workers and supervisors publish (step.*, run.completed...).
        await v.refused("publish", f"{A}.events.ten.r1.sys")
        await v.refused("publish", f"{A}.events.r1.sys")  # the layout before the agent token
        await v.refused("publish", f"$JS.API.STREAM.DELETE.{A.upper()}_RUNS")
        await v.refused("publish", f"$JS.API.STREAM.CREATE.{A.upper()}_RUNS")
        await v.refused("publish", f"$JS.API.CONSUMER.DELETE.{A.upper()}_RUNS.agent_ten")
        await v.refused("publish", f"$JS.API.CONSUMER.MSG.NEXT.{A.upper()}_RUNS.agent_ten")
        await v.refused("publish", f"$JS.API.STREAM.MSG.DELETE.{A.upper()}_RUNS")
        await v.refused("subscribe", f"{A}.signals.>")
        # Nor answer liveness probes for a worker (a dead one would look alive), nor probe.
        await v.refused("subscribe", Names(A).alive_subject("some-worker"))
        await v.refused("publish", Names(A).alive_subject("some-worker"))
        await v.refused("subscribe", "_INBOX.>")
        # Namespace B, on NATS.
        await v.refused("publish", f"{B}.runs.ten")
        await v.refused("publish", f"{B}.events.x")
        await v.refused("publish", f"$JS.API.STREAM.INFO.{B.upper()}_RUNS")
        await v.refused("subscribe", f"{B}.events.>")
        await v.refused("subscribe", f"_INBOX_{B}.>")
        # Redis: what only workers and supervisors write, and anything of namespace B.
        run = f"{A}:{{r1}}"
        for forbidden in (
            ("DEL", f"{run}:journal"),
            ("XDEL", f"{run}:journal", "1-0"),
            ("XDEL", f"{run}:signals", "1-0"),
            ("HDEL", f"{run}:run", "worker"),
            ("ZADD", f"{A}:timers", "1", "r1"),
            ("HSET", f"{run}:lg:checkpoint", "k", "v"),
            ("HGETALL", f"{B}:{{r1}}:run"),
            ("HSET", f"{B}:{{r1}}:run", "status", "x"),
            ("XADD", f"{B}:{{r1}}:journal", "*", "d", "x"),
            ("FLUSHDB",),
            ("KEYS", "*"),
            ("SCAN", "0"),
        ):
            with pytest.raises(NoPermissionError):
                await r.execute_command(*forbidden)
    finally:
        await v.nc.close()
        await r.aclose()


async def test_tenant_b_cannot_read_cancel_signal_or_fork_tenant_a_runs(
    provisioned: tuple[NatsServer, RedisServer],
) -> None:
    servers = provisioned
    a = await Client.connect(settings=_settings(f"{A}_client", servers, provision="off"))
    try:
        # A run of tenant A that no worker takes: it stays accepted, easy to cancel.
        victim = await a.submit("approval", 1)
        a_keys = [f"{A}:{{{victim.run_id}}}:run", f"{A}:{{{victim.run_id}}}:journal"]
        a_signals = [a_keys[0], f"{A}:{{{victim.run_id}}}:signals"]
        nats_url, redis_url = _urls(f"{B}_client", servers)
        b = aioredis.Redis.from_url(redis_url)
        v = await Violations().connect(nats_url)
        try:
            # Tenant B's admin connects with the default provision=auto: with its rights
            # that creates B's streams and buckets (zero set-up still works).
            await (await Client.connect(settings=_settings(f"{B}_admin", servers))).close()
            # Through the API, B's client lives in namespace B: A's runs do not exist there.
            b_settings = _settings(f"{B}_client", servers, provision="off")
            b_client = await Client.connect(settings=b_settings)
            try:
                with pytest.raises(RunNotFoundError):
                    await b_client.handle(victim.run_id).status()
                assert (await b_client.handle(victim.run_id).cancel()) == "missing"
                with pytest.raises(RunNotFoundError):
                    await b_client.handle(victim.run_id).signal("approve", 1)
                with pytest.raises(RunNotFoundError):
                    await b_client.fork(victim.run_id, at="step:quote")
            finally:
                await b_client.close()
            # Pointed at namespace A, B's credentials cannot even look it up.
            with pytest.raises(ConfigurationError, match="not allowed"):
                await Client.connect(settings=msgspec.structs.replace(b_settings, namespace=A))
            # Directly on the servers: read, cancel, signal, fork (read the journal).
            for attempt in (
                ("HGETALL", a_keys[0]),
                ("XRANGE", a_keys[1], "-", "+"),
                ("EVAL", _scripts.CANCEL, 2, *a_keys, time.time(), "by B", b"x"),
                ("EVAL", _scripts.SIGNAL, 2, *a_signals, "approve", b"1", time.time(), 0),
                ("ZREVRANGE", f"{A}:runs", 0, -1),
            ):
                with pytest.raises(NoPermissionError):
                    await b.execute_command(*attempt)
            await v.refused("publish", f"{A}.signals.{victim.run_id}")
            await v.refused("publish", f"{A}.runs.approval")
            await v.refused("publish", f"$JS.API.STREAM.MSG.GET.{A.upper()}_EVENTS")
            await v.refused("publish", f"$JS.API.DIRECT.GET.{A.upper()}_EVENTS")
            await v.refused("publish", f"$JS.API.CONSUMER.CREATE.{A.upper()}_EVENTS")
            await v.refused("subscribe", f"{A}.events.{victim.run_id}")
            await v.refused("subscribe", f"_INBOX_{A}.>")
        finally:
            await v.nc.close()
            await b.aclose()
        # Tenant A's run is untouched.
        assert (await victim.status()).status == "accepted"
        assert (await victim.cancel()) == "cancelled"
    finally:
        await a.close()


# -- the permission sets themselves (no server) -------------------------------------------------


def _matches(pattern: str, subject: str) -> bool:
    """NATS wildcard match of ``subject`` (which may itself hold wildcards) by ``pattern``."""
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


def test_only_the_admin_may_create_update_or_delete() -> None:
    changes = ("CREATE", "UPDATE", "DELETE", "PURGE")
    for role in ROLES:
        perms = nats_permissions(role, "acme")
        topology = [
            s
            for s in perms.publish
            if s.startswith("$JS.API.STREAM.") and s.split(".")[3] in changes
        ] + [s for s in perms.publish if "_RUNS" in s and ".CONSUMER.DELETE." in s]
        assert bool(topology) == (role == "admin"), (role, topology)


def test_no_role_of_one_namespace_reaches_another() -> None:
    for role in ROLES:
        a, b = nats_permissions(role, "acme"), nats_permissions(role, "acme_b")
        # The one exception: the admin's $JS.API.INFO (account totals, no names; nats-py asks
        # for it before making a KV bucket). docs/security.md#tenant-isolation says so.
        shared = {"$JS.API.INFO"} if role == "admin" else set()
        for pattern in {*a.publish, *a.subscribe} - shared:
            for other in (*b.publish, *b.subscribe):
                assert not _matches(pattern, other), (role, pattern, other)
        key_patterns = [r.split("~", 1)[1] for r in redis_acl_rules(role, "acme") if "~" in r]
        assert key_patterns and all(fnmatchcase("acme:{r1}:run", k) for k in key_patterns[:1])
        for key in ("acme_b:{r1}:run", "acme_b:runs", "acmeb:{r1}:journal", "other:x"):
            assert not any(fnmatchcase(key, k) for k in key_patterns), (role, key)


def test_clients_and_viewers_cannot_write_what_workers_write() -> None:
    ns = Names("acme")
    worker_only = [
        ns.lease_subject("r1"),
        ns.lease_subject("leader", prefix="supervisor."),
        ns.worker_subject("w1"),
        ns.kv_subject(ns.agents_bucket, "a"),
        ns.events_subject("r1", "sys", agent="a"),
        ns.events_subject("r1", "sys", agent=""),
        "acme.events.r1.sys",
        ns.rejected_subject("a"),
        ns.max_deliveries_advisories.replace("*", "agent_a"),
        f"$JS.ACK.{ns.runs_stream}.agent_a.1.1.1.1.0",
    ]
    for role in ("client", "viewer"):
        publish = nats_permissions(role, "acme").publish
        for subject in worker_only:
            assert not any(_matches(p, subject) for p in publish), (role, subject)
    # Liveness: workers answer on their alive subject, only the supervisor asks.
    alive = ns.alive_subject("host.example-1")
    for role in ROLES:
        perms = nats_permissions(role, "acme")
        answers = any(_matches(p, alive) for p in perms.subscribe)
        asks = any(_matches(p, alive) for p in perms.publish)
        assert answers == (role in ("worker", "admin")), role
        assert asks == (role in ("supervisor", "admin")), role
    assert not any(
        _matches(p, ns.runs_subject("a")) or p.endswith(".client")
        for p in nats_permissions("viewer", "acme").publish
    )
    assert "+evalsha" not in redis_acl_rules("viewer", "acme")
    # The control API: clients ask everything, viewers only read, workers and supervisors
    # serve it (and may answer).
    for role in ROLES:
        perms = nats_permissions(role, "acme")
        may = {
            op for op in OPERATIONS if any(_matches(p, ns.api_subject(op)) for p in perms.publish)
        }
        serves = any(_matches(p, ns.api_subject("submit")) for p in perms.subscribe)
        expected = {
            "client": set(OPERATIONS),
            "viewer": {"status", "result"},
            "admin": set(OPERATIONS),
        }.get(role, set())
        assert may == expected, role
        assert serves == (role in ("worker", "supervisor", "admin")), role
        assert perms.allow_responses == (role in ("worker", "supervisor", "admin")), role


async def test_the_security_commands_print_the_sets_and_refuse_bad_names(tmp_path: Path) -> None:
    env = _env(tmp_path)
    printed = await run_cli("security", "nats-permissions", "--role", "client", env=env)
    assert (printed.code, printed.out) == (0, render_nats_permissions("client", "stalwart"))
    acl = ("security", "redis-acl", "--role", "viewer", "--namespace", "acme", "--user")
    printed = await run_cli(*acl, "acme-dash", "--password-sha256", "ab" * 32, env=env)
    assert printed.code == 0, printed
    assert printed.out.startswith(f"ACL SETUSER acme-dash reset on #{'ab' * 32} %R~acme:* ")
    for bad in (
        (*acl, "two words"),
        (*acl, "u", "--password-sha256", "not-hex"),
        ("security", "nats-permissions", "--role", "worker", "--namespace", "Acme"),
    ):
        refused = await run_cli(*bad, env=env)
        assert refused.code == 2 and refused.err.startswith("stalwart: ConfigurationError"), refused
        assert "Traceback" not in refused.err
