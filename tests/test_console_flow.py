"""The console's Flow API against real servers: what GET /api/flow shows, and the two flow
actions (set-limit, resume) behind the token, read-only and CSRF checks, logged.

The rules are published as a worker publishes them when it starts, and their state is made
through the rules' own handles, so no worker process is needed; the browser test with
workers and a run waiting on a concurrency limit is ``test_console_browser.py``.
"""

from __future__ import annotations

import shlex
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import httpx
import msgspec
import pytest
import redis.asyncio as aioredis
import structlog

from stalwart import Client, StepSpec
from stalwart.console import Guard, create_app
from stalwart.flow import (
    ADMIT,
    RESUME_SIGNAL,
    ConcurrencyLimit,
    FlowCall,
    FlowStore,
    Outcome,
    RateLimit,
    SharedBreaker,
    SpendLimit,
    publish_rules,
)
from stalwart.roles import render_redis_acl

if TYPE_CHECKING:
    from stalwart import Settings
    from tests.conftest import Servers

TOKEN = "flow-console-token-0123456789abcdef"
ORIGIN = "http://127.0.0.1:8750"


@pytest.fixture
def console(client: Client) -> Callable[..., object]:
    @asynccontextmanager
    async def open_(**guard: object) -> AsyncIterator[tuple[httpx.AsyncClient, Guard]]:
        g = Guard(**{"token": TOKEN, "bind": "127.0.0.1", **guard})  # type: ignore[arg-type]
        transport = httpx.ASGITransport(app=create_app(client, g))
        async with httpx.AsyncClient(transport=transport, base_url=ORIGIN) as http:
            yield http, g

    return open_


BEARER = {"authorization": f"Bearer {TOKEN}"}
RULES = [
    RateLimit(name="openai", resources="model:*", requests=5, per=60),
    SpendLimit(name="daily", limit_usd=2.5),
    ConcurrencyLimit(name="per-agent", key="agent", limit=1),
    SharedBreaker(name="llm", resources="model:*", threshold=1, cooldown=30),
]


class Down(Exception):
    status_code = 503


def _call(run: str) -> FlowCall:
    return FlowCall(
        run, "agent", "model:gpt", StepSpec(key="model:1", kind="model", name="gpt", fp="x"), 1
    )


async def _published(client: Client) -> FlowStore:
    fs = FlowStore(client.store.redis, client.store.ns)
    await publish_rules(fs, RULES, "shop")  # as a worker does when it starts
    return fs


async def test_flow_view_shows_usage_waiting_runs_and_breakers(console, client: Client) -> None:
    fs = await _published(client)
    rate = RULES[0].bind(fs)
    for r in ("a1", "a2"):
        assert await rate.acquire(_call(r)) is ADMIT
    await fs.mark_waiting("openai", "waiting-run-1", 10**10)
    brk = RULES[3].bind(fs)
    failing = _call("b1")
    assert await brk.acquire(failing) is ADMIT
    await brk.release(failing, Outcome(ok=False, error=Down("503")))
    async with console() as (http, _):
        assert (await http.get("/api/flow")).status_code == 401
        r = await http.get("/api/flow", headers=BEARER)
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        view = r.json()
        limits = {s["name"]: s for s in view["limits"]}
        assert set(limits) == {"openai", "daily", "per-agent", "llm"}
        assert limits["openai"]["used"]["requests"] == 2
        assert limits["openai"]["limit"] == {"requests": 5.0}
        assert limits["openai"]["waiting"] == ["waiting-run-1"]
        assert limits["daily"]["limit"] == {"usd": 2.5} and limits["daily"]["period"]
        assert limits["per-agent"]["limit"] == {"per_key": 1}
        (b,) = view["breakers"]
        assert (b["rule"], b["state"], b["failures"]) == ("llm", "open", 1)
        (cc,) = view["concurrency"]
        assert cc["rule"] == "per-agent" and cc["running"] == 0 and cc["keys"] == []
        assert view["budgets"] == [] and view["at"] > 0


async def test_flow_actions_need_csrf_and_are_refused_read_only(console, client: Client) -> None:
    fs = await _published(client)
    async with console(read_only=True) as (http, guard):
        ok = {**BEARER, "origin": ORIGIN, "x-stalwart-csrf": guard.csrf_token}
        for action, body in [("set-limit", {"usd": 9}), ("resume", {})]:
            r = await http.post(f"/api/flow/daily/{action}", json=body, headers=ok)
            assert r.status_code == 403 and "read-only" in r.json()["error"], action
        # Reading stays open in read-only mode.
        assert (await http.get("/api/flow", headers=BEARER)).status_code == 200
    async with console() as (http, guard):
        path = "/api/flow/daily/set-limit"
        assert (await http.post(path, json={"usd": 9})).status_code == 401
        plain = await http.post(path, json={"usd": 9}, headers=BEARER)
        assert plain.status_code == 403 and "CSRF" in plain.json()["error"]
        foreign = {**BEARER, "origin": "https://evil.example", "x-stalwart-csrf": guard.csrf_token}
        assert (await http.post(path, json={"usd": 9}, headers=foreign)).status_code == 403
        wrong = {**BEARER, "origin": ORIGIN, "x-stalwart-csrf": "guess"}
        assert (await http.post(path, json={"usd": 9}, headers=wrong)).status_code == 403
    assert await fs.limit_override("daily") is None  # nothing was changed


async def test_set_limit_and_resume_do_what_the_cli_does(console, client: Client) -> None:
    fs = await _published(client)
    held = await client.submit("nobody", None, require_registered=False)
    await fs.mark_waiting("daily", held.run_id, 10**10)
    async with console() as (http, guard):
        ok = {**BEARER, "origin": ORIGIN, "x-stalwart-csrf": guard.csrf_token}
        with structlog.testing.capture_logs() as logs:
            r = await http.post("/api/flow/daily/set-limit", json={"usd": 7.5}, headers=ok)
        assert r.status_code == 200, r.text
        assert r.json() == {"limit": 7.5, "woken": 0}  # accepted, not passivated: no wake
        assert await fs.limit_override("daily") == 7.5
        assert {"action": "flow.set-limit", "rule": "daily"}.items() <= logs[-1].items()
        view = (await http.get("/api/flow", headers=BEARER)).json()
        assert {s["name"]: s for s in view["limits"]}["daily"]["limit"] == {"usd": 7.5}
        cleared = await http.post("/api/flow/daily/set-limit", json={"clear": True}, headers=ok)
        assert cleared.json()["limit"] is None and await fs.limit_override("daily") is None

        for rule, body, says in [
            ("openai", {"usd": 1}, "is a RateLimit, not a SpendLimit"),
            ("daily", {}, "either a limit in USD"),
            ("daily", {"usd": 1, "clear": True}, "either a limit in USD"),
            ("daily", {"usd": -1}, "non-negative"),
            ("daily", {"usd": "lots"}, "bad request body"),
            ("daily", {"bogus": 1}, "bad request body"),
            ("nope", {"usd": 1}, "no flow rule 'nope' is published (known: daily, llm"),
            ("a%20b", {"usd": 1}, "invalid flow rule name"),
        ]:
            r = await http.post(f"/api/flow/{rule}/set-limit", json=body, headers=ok)
            assert r.status_code == 400 and says in r.json()["error"], (rule, body, r.text)
        for rule, body, says in [
            ("per-agent", {}, "is a ConcurrencyLimit: its runs wait for a slot"),
            ("nope", {}, "no flow rule 'nope' is published"),
            ("daily", {"runs": "x"}, "bad request body"),
        ]:
            r = await http.post(f"/api/flow/{rule}/resume", json=body, headers=ok)
            assert r.status_code == 400 and says in r.json()["error"], (rule, body, r.text)

        r = await http.post("/api/flow/daily/resume", json={}, headers=ok)
        assert r.status_code == 200 and r.json() == {"resumed": [held.run_id], "refused": {}}
        signals = await client.store.read_signals(held.run_id)
        assert [name for _, name, _ in signals] == [RESUME_SIGNAL]
        bad = await http.post("/api/flow/daily/resume", json={"runs": ["a b"]}, headers=ok)
        assert bad.status_code == 400 and "invalid run id" in bad.json()["error"]
        await held.cancel()
        gone = await http.post("/api/flow/daily/resume", json={}, headers=ok)
        assert gone.status_code == 200 and list(gone.json()["refused"]) == [held.run_id]


async def test_set_limit_without_the_admin_rights_says_which_role_it_needs(
    settings: Settings, servers: Servers, namespace: str, client: Client
) -> None:
    await _published(client)
    admin = aioredis.Redis.from_url(servers.redis_url)
    try:
        line = render_redis_acl("client", namespace, "console-client")
        await admin.execute_command(*shlex.split(line), ">pw-console-client")
    finally:
        await admin.aclose()
    url = servers.redis_url.replace("redis://", "redis://console-client:pw-console-client@")
    limited = await Client.connect(settings=msgspec.structs.replace(settings, redis_url=url))
    try:
        g = Guard(token=TOKEN, bind="127.0.0.1")
        transport = httpx.ASGITransport(app=create_app(limited, g))
        async with httpx.AsyncClient(transport=transport, base_url=ORIGIN) as http:
            ok = {**BEARER, "origin": ORIGIN, "x-stalwart-csrf": g.csrf_token}
            r = await http.post("/api/flow/daily/set-limit", json={"usd": 3}, headers=ok)
            assert r.status_code == 400 and "admin role" in r.json()["error"], r.text
            assert (await http.get("/api/flow", headers=BEARER)).status_code == 200
    finally:
        await limited.close()
