"""The console's API against real servers: access token, host check, CSRF, read-only, retry.

The app runs in-process behind httpx's ASGI transport (the browser test,
test_console_browser.py, runs the real ``stalwart console`` process).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
import pytest

from stalwart import Client
from stalwart._exit_codes import exit_code_for
from stalwart.console import Guard, create_app
from stalwart.console._auth import COOKIE, LOGIN_FAILURES_PER_MINUTE, is_loopback
from stalwart.errors import ConfigurationError, InvalidRequestError, RunNotFoundError
from tests.conftest import WorkerFactory
from tests.helpers import rid

TOKEN = "s3cret-console-token-0123456789"
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


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def unit_guard(**kw: object) -> Guard:
    return Guard(**{"token": TOKEN, "bind": "127.0.0.1", **kw})  # type: ignore[arg-type]


# -- pure decisions --------------------------------------------------------------------------


def test_loopback_names() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "::1", "[::1]", "localhost", "127.9.9.9"]))
    assert not any(map(is_loopback, ["0.0.0.0", "10.0.0.1", "example.com", "::", ""]))


def test_host_check_refuses_rebound_names_on_loopback() -> None:
    g = unit_guard()
    assert (
        g.host_allowed("127.0.0.1:8750")
        and g.host_allowed("localhost:1")
        and g.host_allowed("[::1]:8")
    )
    assert not g.host_allowed("attacker.example:8750")  # DNS rebinding to 127.0.0.1
    assert unit_guard(allowed_hosts=frozenset({"console.internal"})).host_allowed(
        "console.internal"
    )
    # On a public bind the token is the defence; a list of names narrows it further.
    assert unit_guard(bind="0.0.0.0").host_allowed("anything.example")
    assert not unit_guard(bind="0.0.0.0", allowed_hosts=frozenset({"a.example"})).host_allowed(
        "b.example"
    )


def test_token_cookie_and_csrf_decisions() -> None:
    g = unit_guard()
    assert g.authenticated(f"Bearer {TOKEN}", "") and g.authenticated("", g.session_value)
    assert not g.authenticated("Bearer nope", "") and not g.authenticated("", TOKEN)
    assert TOKEN not in g.session_value  # the cookie never carries the token
    assert g.csrf_ok(ORIGIN, "", g.csrf_token, ORIGIN)
    assert g.csrf_ok("", ORIGIN + "/#/runs", g.csrf_token, ORIGIN)  # Referer when no Origin
    assert not g.csrf_ok("https://evil.example", "", g.csrf_token, ORIGIN)
    assert not g.csrf_ok("null", "", g.csrf_token, ORIGIN)
    assert not g.csrf_ok(ORIGIN, "", "", ORIGIN) and not g.csrf_ok(ORIGIN, "", "x", ORIGIN)
    assert not g.csrf_ok("", "", g.csrf_token, ORIGIN)
    assert Guard(token="", bind="127.0.0.1").authenticated("", "")


def test_login_is_rate_limited() -> None:
    g = unit_guard()
    for _ in range(LOGIN_FAILURES_PER_MINUTE):
        assert g.login("wrong", now=100.0) is False
    assert g.login(TOKEN, now=100.0) is None  # even the right token waits out the minute
    assert g.login(TOKEN, now=161.0) is True


# -- the app over real servers ---------------------------------------------------------------


async def test_reads_need_the_token_or_the_login_cookie(console) -> None:
    async with console() as (http, _):
        assert (await http.get("/api/runs")).status_code == 401
        assert (await http.get("/api/runs", headers=bearer("wrong" * 6))).status_code == 401
        ok = await http.get("/api/runs", headers=bearer())
        assert ok.status_code == 200 and ok.json()["runs"] == []
        # The page itself and its scripts carry no data: served without a token.
        page = await http.get("/")
        assert page.status_code == 200 and "<script" in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert "unsafe-inline" not in page.headers["content-security-policy"]
        assert page.headers["x-frame-options"] == "DENY"
        js = await http.get("/static/app.js")
        assert js.status_code == 200 and "javascript" in js.headers["content-type"]

        bad = await http.post("/api/login", json={"token": "nope"}, headers={"origin": ORIGIN})
        assert bad.status_code == 401 and COOKIE not in bad.cookies
        cross = await http.post(
            "/api/login", json={"token": TOKEN}, headers={"origin": "https://evil.example"}
        )
        assert cross.status_code == 403
        good = await http.post("/api/login", json={"token": TOKEN}, headers={"origin": ORIGIN})
        assert good.status_code == 200
        cookie = good.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and TOKEN not in cookie
        assert (await http.get("/api/workers")).status_code == 200  # the cookie now
        await http.post("/api/logout", headers={"origin": ORIGIN})
        http.cookies.clear()
        assert (await http.get("/api/agents")).status_code == 401


async def test_a_foreign_host_name_is_refused(console) -> None:
    async with console() as (http, _):
        r = await http.get("/api/runs", headers={**bearer(), "host": "rebound.example:8750"})
        assert r.status_code == 421
        assert (await http.get("/", headers={"host": "rebound.example"})).status_code == 421


async def test_actions_need_same_origin_and_the_csrf_token(console, client: Client) -> None:
    handle = await client.submit("nobody", None, require_registered=False)
    async with console() as (http, guard):
        path = f"/api/runs/{handle.run_id}/cancel"
        plain = await http.post(path, json={}, headers=bearer())
        assert plain.status_code == 403 and "CSRF" in plain.json()["error"]
        # A bearer a proxy injects is as ambient as a cookie: CSRF is checked for it too.
        foreign = {
            **bearer(),
            "origin": "https://evil.example",
            "x-stalwart-csrf": guard.csrf_token,
        }
        assert (await http.post(path, json={}, headers=foreign)).status_code == 403
        wrong = {**bearer(), "origin": ORIGIN, "x-stalwart-csrf": "guess"}
        assert (await http.post(path, json={}, headers=wrong)).status_code == 403
        assert (await handle.status()).status == "accepted"  # nothing happened so far

        session = (await http.get("/api/session", headers=bearer())).json()
        assert session["csrf"] == guard.csrf_token and session["read_only"] is False
        ok = {**bearer(), "origin": ORIGIN, "x-stalwart-csrf": session["csrf"]}
        done = await http.post(path, json={"reason": "from the test"}, headers=ok)
        assert done.status_code == 200 and done.json() == {"outcome": "cancelled"}
        assert (await handle.status()).status == "cancelled"

        unknown = await http.post(f"/api/runs/{rid()}/retry", json={}, headers=ok)
        assert unknown.status_code == 404
        bad_id = await http.post("/api/runs/a%20b/cancel", json={}, headers=ok)
        assert bad_id.status_code == 400 and "invalid run id" in bad_id.json()["error"]
        junk = await http.post(path.replace("cancel", "signal"), json={"bogus": 1}, headers=ok)
        assert junk.status_code == 400
        huge = await http.post(path.replace("cancel", "signal"), content=b"x" * 300_000, headers=ok)
        assert huge.status_code == 400 and "body over" in huge.json()["error"]


async def test_behind_a_tls_proxy_the_public_origin_is_the_one_checked(
    console, client: Client
) -> None:
    handle = await client.submit("nobody", None, require_registered=False)
    public = "https://console.example.com"
    async with console(public_origin=public) as (http, guard):
        path = f"/api/runs/{handle.run_id}/cancel"
        csrf = {**bearer(), "x-stalwart-csrf": guard.csrf_token}
        hop = await http.post(path, json={}, headers={**csrf, "origin": ORIGIN})
        assert hop.status_code == 403  # the plain-HTTP hop's origin is not the browser's
        ok = await http.post(path, json={}, headers={**csrf, "origin": public})
        assert ok.status_code == 200 and ok.json() == {"outcome": "cancelled"}


async def test_read_only_refuses_every_action(console, client: Client) -> None:
    handle = await client.submit("nobody", None, require_registered=False)
    async with console(read_only=True) as (http, guard):
        session = (await http.get("/api/session", headers=bearer())).json()
        assert session["read_only"] is True
        ok = {**bearer(), "origin": ORIGIN, "x-stalwart-csrf": guard.csrf_token}
        for action, body in [
            ("cancel", {}),
            ("signal", {"name": "go"}),
            ("approve", {"call_id": "c1"}),
            ("fork", {"at": "s1"}),
            ("retry", {}),
        ]:
            r = await http.post(f"/api/runs/{handle.run_id}/{action}", json=body, headers=ok)
            assert r.status_code == 403 and "read-only" in r.json()["error"], action
    assert (await handle.status()).status == "accepted"


async def test_run_data_is_served_as_json_never_as_markup(console, client: Client) -> None:
    hostile = '<script>alert(1)</script><img src=x onerror="alert(2)">'
    handle = await client.submit("nobody", hostile, require_registered=False)
    await client.store.dead_letter(handle.run_id, "nobody", hostile)
    async with console() as (http, _):
        r = await http.get(f"/api/runs/{handle.run_id}", headers=bearer())
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert hostile in r.json()["error"]
        listed = await http.get("/api/runs", params={"search": "<script>"}, headers=bearer())
        assert listed.status_code == 200 and listed.json()["runs"] == []


async def test_signal_fork_and_approve_through_the_console(
    client: Client, workers: WorkerFactory, console
) -> None:
    await workers("w1")
    handle = await client.submit("approval", 7)
    async with console() as (http, guard):
        ok = {**bearer(), "origin": ORIGIN, "x-stalwart-csrf": guard.csrf_token}
        base = f"/api/runs/{handle.run_id}"
        nameless = await http.post(f"{base}/signal", json={"payload": 1}, headers=ok)
        assert nameless.status_code == 400 and "needs a name" in nameless.json()["error"]
        sent = await http.post(
            f"{base}/signal", json={"name": "approve", "payload": {"ok": True}}, headers=ok
        )
        assert sent.status_code == 200 and sent.json()["outcome"] in ("stored", "woke")
        assert await handle.result(timeout=30) == {"quote": 7, "decision": {"ok": True}}

        nothing = await http.post(f"{base}/approve", json={"call_id": "c9"}, headers=ok)
        assert nothing.status_code == 400
        assert "no pending approval request" in nothing.json()["error"]
        stepless = await http.post(f"{base}/fork", json={}, headers=ok)
        assert stepless.status_code == 400
        forked = await http.post(f"{base}/fork", json={"at": "quote"}, headers=ok)
        assert forked.status_code == 200, forked.text
        fork = client.handle(forked.json()["run_id"])
        assert (await fork.status()).agent == "approval"
        await fork.cancel()

        detail = (await http.get(base, headers=bearer())).json()
        assert detail["run"]["status"] == "completed"
        assert detail["result"] == {"quote": 7, "decision": {"ok": True}}
        assert [s["key"] for s in detail["steps"]][:1] == ["step:quote"]
        unknown = await http.get(f"/api/runs/{rid()}/events", headers=bearer())
        assert unknown.status_code == 404
        bad_agent = await http.get("/api/events?agent=a.b", headers=bearer())
        assert bad_agent.status_code == 400


async def test_retry_starts_a_dead_lettered_run_again(
    client: Client, workers: WorkerFactory, console
) -> None:
    dead = await client.submit("typed", {"sku": "A-1", "qty": 2}, require_registered=False)
    assert await client.store.dead_letter(dead.run_id, "typed", "no consumer took it")
    assert (await dead.status()).error_type == "DeadLettered"
    await workers("w1")
    async with console() as (http, guard):
        ok = {**bearer(), "origin": ORIGIN, "x-stalwart-csrf": guard.csrf_token}
        r = await http.post(f"/api/runs/{dead.run_id}/retry", json={}, headers=ok)
        assert r.status_code == 200, r.text
    again = client.handle(r.json()["run_id"])
    assert again.run_id != dead.run_id
    assert await again.result(timeout=30) == {"sku": "A-1", "total": 4}
    record = await again.status()
    assert record.agent == "typed" and record.decode_input() == {"sku": "A-1", "qty": 2}
    assert (await dead.status()).error_type == "DeadLettered"  # the ended run is unchanged

    with pytest.raises(InvalidRequestError, match="completed"):
        await client.retry(again.run_id)
    live = await client.submit("nobody", None, require_registered=False)
    with pytest.raises(InvalidRequestError, match="still accepted"):
        await client.retry(live.run_id)
    with pytest.raises(RunNotFoundError):
        await client.retry(rid())
    with pytest.raises(InvalidRequestError, match="taken"):
        await client.retry(dead.run_id, new_id=again.run_id)


# -- the commands ----------------------------------------------------------------------------


# Parsed and checked in-process without ``main()``: main configures logging for the process,
# which would leave structlog writing to pytest's captured (later closed) stdout.


def _console_args(*flags: str) -> argparse.Namespace:
    from stalwart.cli import _parser

    return _parser().parse_args(["console", *flags])


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--host", "0.0.0.0"], "needs an access token"),
        (["--host", "0.0.0.0", "--no-token"], "only allowed on a loopback address"),
        (["--token-file", "/nonexistent/token"], "--token-file"),
    ],
)
def test_console_refuses_to_serve_unprotected(
    flags: list[str], said: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stalwart._cli_console import _token

    monkeypatch.delenv("STALWART_CONSOLE_TOKEN", raising=False)
    with pytest.raises(ConfigurationError, match=re.escape(said)):
        _token(_console_args(*flags))
    assert exit_code_for(ConfigurationError("x")) == 2


def test_console_tokens(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from stalwart._cli_console import _origin, _token

    monkeypatch.setenv("STALWART_CONSOLE_TOKEN", "short")
    with pytest.raises(ConfigurationError, match="at least 16 characters"):
        _token(_console_args())
    monkeypatch.setenv("STALWART_CONSOLE_TOKEN", TOKEN)
    assert _token(_console_args("--host", "0.0.0.0")) == (TOKEN, False)
    (tmp_path / "t").write_text(TOKEN[::-1] + "\n")
    assert _token(_console_args("--token-file", str(tmp_path / "t"))) == (TOKEN[::-1], False)
    monkeypatch.delenv("STALWART_CONSOLE_TOKEN")
    made, fresh = _token(_console_args())
    assert fresh and len(made) >= 16  # loopback without a token: one is made
    assert _token(_console_args("--no-token")) == ("", False)
    assert _origin("https://console.example.com/") == "https://console.example.com"
    with pytest.raises(ConfigurationError, match="--public-origin must be"):
        _origin("console.example.com")


async def test_console_says_how_to_install_what_it_needs(
    monkeypatch: pytest.MonkeyPatch, settings
) -> None:
    import sys

    from stalwart._cli_console import cmd_console

    for name in [m for m in sys.modules if m.startswith(("stalwart.console", "starlette"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "starlette", None)
    with pytest.raises(ConfigurationError, match=re.escape("pip install 'stalwart[console]'")):
        await cmd_console(_console_args("--no-token"), settings, None)  # type: ignore[arg-type]


async def test_retry_command_prints_the_new_run(client: Client, settings) -> None:
    import asyncio
    import os
    import sys

    from tests.conftest import ROOT

    dead = await client.submit("nobody", [1, 2], require_registered=False)
    await client.store.dead_letter(dead.run_id, "nobody", "undeliverable")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "stalwart", "retry", dead.run_id, "--new-run-id", "again-1",
        "--nats-url", settings.nats_url, "--redis-url", settings.redis_url,
        "--namespace", settings.namespace,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert out.decode().strip() == "again-1"
    record = await client.handle("again-1").status()
    assert record.agent == "nobody" and record.decode_input() == [1, 2]
    assert record.status == "accepted"


def test_pages_never_parse_data_as_markup() -> None:
    """The front end builds DOM from data with textContent only, and loads nothing foreign."""
    from stalwart.console._app import STATIC

    sources = {p.name: p.read_text() for p in STATIC.rglob("*") if p.is_file()}
    assert {"index.html", "app.js", "dom.js", "runs.js", "run.js"} <= set(sources)
    for name, text in sources.items():
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in text, f"{name} uses {sink}"
        assert "http://" not in text and "https://" not in text, f"{name} loads from elsewhere"
    index = sources["index.html"]
    assert re.findall(r"<script[^>]*>", index) == ['<script type="module" src="/static/app.js">']
    assert re.search(r"\son[a-z]+\s*=", index) is None  # no inline event handlers


def sse_data(body: str) -> list[dict[str, object]]:
    """The JSON data of a server-sent event stream's messages (not its named events)."""
    import json

    out = []
    for frame in body.split("\n\n"):
        lines = frame.splitlines()
        data = [line[6:] for line in lines if line.startswith("data: ")]
        if data and not any(line.startswith("event:") for line in lines):
            out.append(json.loads("\n".join(data)))
    return out


async def test_run_stream_sends_parts_with_resets_applied(
    client: Client, settings, servers, console, counters
) -> None:
    import asyncio

    from tests.conftest import worker_pool
    from tests.helpers import eventually, gated_key, mark_gated, open_gate

    async with worker_pool("tests.stream_apps:app", settings, servers, client) as start:
        await start("w1")
        run_id = rid()
        await mark_gated(counters, run_id, "step:model1")
        handle = await client.submit("streamer", {"steps": 2, "fail_once": "model1"}, run_id=run_id)
        js, stream = client.broker.js, client.broker.names.events_stream
        consumers = (await js.stream_info(stream)).state.consumer_count
        async with console() as (http, _):
            unknown = await http.get(f"/api/runs/{rid()}/stream", headers=bearer())
            assert unknown.status_code == 404
            assert (await http.get(f"/api/runs/{run_id}/stream")).status_code == 401
            reading = asyncio.create_task(
                http.get(f"/api/runs/{run_id}/stream", headers=bearer(), timeout=60)
            )

            async def attached() -> bool:  # the stream's consumer exists: it reads from here
                return (await js.stream_info(stream)).state.consumer_count > consumers

            await eventually(attached, timeout=60)
            await counters.delete(gated_key(run_id, "step:model1"))  # attempt 2 goes through
            await open_gate(counters, run_id, "step:model1")  # then model1's attempt 1 fails
            r = await asyncio.wait_for(reading, 20)
        result = await handle.result(timeout=10)

    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    parts = sse_data(r.text)
    assert parts[-1] == {"part": "end", "status": "completed", "result": result, "error": ""}
    resets = [p for p in parts if p["part"] == "reset"]
    assert [(p["step"], p["attempt"], p["reason"]) for p in resets] == [("step:model1", 2, "retry")]
    text: dict[object, str] = {}
    for p in parts:  # the browser's recipe: append chunks, empty a step on its reset
        if p["part"] == "chunk" and p["type"] == "model.delta":
            text[p["step"]] = text.get(p["step"], "") + p["data"]["text"]  # type: ignore[index]
        elif p["part"] == "reset":
            text[p["step"]] = ""
    assert "".join(text.values()) == result
    assert r.text.rstrip().endswith("event: end\ndata: {}")
