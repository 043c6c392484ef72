"""The wire contract from Python, speaking only NATS: JSON run requests, the control API.

Worker processes run ``tests.apps_wire:app`` (started by the ``stalwart worker`` command, so
they serve ``<ns>.api.*``); the test asks with plain NATS requests and reads plain JSON or
msgpack, as a client in another language would.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import nats
import pytest

from stalwart import Client, Settings
from stalwart.api import ERROR_HEADER, serve_api
from stalwart.checkpoints._codec import is_sealed
from stalwart.servers import RedisServer
from stalwart.supervisor import Supervisor
from tests.conftest import Servers, WorkerFactory, worker_pool
from tests.helpers import rid

JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def wire_workers(
    settings: Settings, servers: Servers, client: Client
) -> AsyncIterator[WorkerFactory]:
    async with worker_pool("tests.apps_wire:app", settings, servers, client) as start:
        yield start


async def ask(
    client: Client,
    op: str,
    body: Any,
    *,
    headers: dict[str, str] | None = JSON,
    timeout: float = 15,
) -> tuple[dict[str, str], Any]:
    """One API request; returns the reply's headers and its decoded body."""
    if isinstance(body, bytes):
        data = body
    elif headers and headers.get("Content-Type") == "application/json":
        data = json.dumps(body).encode()
    else:
        data = msgspec.msgpack.encode(body)
    reply = await client.broker.nc.request(
        client.broker.names.api_subject(op), data, timeout=timeout, headers=headers
    )
    got = dict(reply.headers or {})
    if got.get("Content-Type") == "application/json":
        return got, json.loads(reply.data)
    return got, msgspec.msgpack.decode(reply.data)


async def error_of(client: Client, op: str, body: Any, **kw: Any) -> tuple[str, str]:
    headers, reply = await ask(client, op, body, **kw)
    assert ERROR_HEADER in headers, reply
    assert reply["code"] == headers[ERROR_HEADER]
    return reply["code"], reply["message"]


async def test_a_json_run_request_runs_and_one_without_the_header_is_told_to_set_it(
    client: Client, wire_workers: WorkerFactory
) -> None:
    await wire_workers()
    names = client.broker.names
    run_id = rid()
    body = json.dumps({"run_id": run_id, "agent": "big", "input": 3}).encode()
    await client.broker.js.publish(
        names.runs_subject("big"), body, headers={**JSON, "Nats-Msg-Id": run_id}
    )
    assert await client.handle(run_id).result(timeout=20) == {"blob": "xxx", "size": 3}

    bare = rid()
    body = json.dumps({"run_id": bare, "agent": "big", "input": 3}).encode()
    await client.broker.js.publish(names.runs_subject("big"), body, headers={"Nats-Msg-Id": bare})
    events = [ev async for ev in client.handle(bare).events()]
    assert events[-1].type == "request.rejected"
    assert "set header Content-Type: application/json" in events[-1].data["reason"]


async def test_submit_signal_status_result_and_cancel_over_the_api(
    client: Client, wire_workers: WorkerFactory
) -> None:
    await wire_workers()
    headers, sub = await ask(client, "submit", {"agent": "greet", "input": {"name": "node"}})
    assert ERROR_HEADER not in headers and headers["Content-Type"] == "application/json"
    run_id = sub["run_id"]
    # Asking again with the run id is the same run (a retried submit starts nothing new).
    _, again = await ask(client, "submit", {"agent": "greet", "input": {}, "run_id": run_id})
    assert again["run_id"] == run_id

    code, message = await error_of(client, "result", {"run_id": run_id})
    assert code == "not_finished" and run_id in message
    _, sig = await ask(client, "signal", {"run_id": run_id, "name": "go", "payload": [1, 2]})
    assert sig["outcome"] in ("stored", "woke")
    _, res = await ask(client, "result", {"run_id": run_id, "wait": 20}, timeout=25)
    assert res["status"] == "completed" and res["offset"] == 0
    assert json.loads(base64.b64decode(res["data"])) == {
        "greeting": "hello node",
        "go": [1, 2],
    }
    _, status = await ask(client, "status", {"run_id": run_id})
    assert status["status"] == "completed" and status["agent"] == "greet" and status["terminal"]

    # msgpack without a header, the default: the reply is msgpack too.
    _, waiting = await ask(client, "submit", {"agent": "waiter"}, headers=None)
    _, cancel = await ask(
        client, "cancel", {"run_id": waiting["run_id"], "reason": "no"}, headers=None
    )
    assert cancel["outcome"] in ("cancelled", "requested")
    _, res = await ask(
        client, "result", {"run_id": waiting["run_id"], "wait": 20}, headers=None, timeout=25
    )
    assert res["status"] == "cancelled" and res["error"]["message"] == "no"


async def test_a_result_larger_than_one_message_is_read_in_pages(
    client: Client, wire_workers: WorkerFactory
) -> None:
    await wire_workers()
    size = 2 * 1024 * 1024
    _, sub = await ask(client, "submit", {"agent": "big", "input": size})
    chunks: list[bytes] = []
    offset, total = 0, None
    while total is None or offset < total:
        _, page = await ask(
            client, "result", {"run_id": sub["run_id"], "offset": offset, "wait": 20}, timeout=25
        )
        assert page["offset"] == offset
        chunk = base64.b64decode(page["data"])
        assert chunk, page
        chunks.append(chunk)
        total, offset = page["size"], offset + len(chunk)
    assert len(chunks) >= 3  # 2 MiB of JSON in base64 pages under a 1 MiB max_payload
    assert json.loads(b"".join(chunks)) == {"blob": "x" * size, "size": size}
    code, _ = await error_of(client, "result", {"run_id": sub["run_id"], "offset": total + 1})
    assert code == "invalid"


async def test_every_refusal_is_a_structured_error(
    client: Client, wire_workers: WorkerFactory
) -> None:
    await wire_workers()
    cases: list[tuple[str, Any, dict[str, str] | None, str, str]] = [
        ("status", b"{not json", JSON, "malformed", "malformed status request"),
        ("status", b'{"run_id": "x"}', None, "malformed", "set header Content-Type"),
        ("status", {"run_id": "x", "extra": 1}, JSON, "malformed", "extra"),
        ("status", {"run_id": "x"}, {"Content-Type": "text/plain"}, "malformed", "unsupported"),
        ("launch", {}, JSON, "unknown_operation", "submit"),
        ("status", {"run_id": rid()}, JSON, "unknown_run", "unknown run"),
        ("cancel", {"run_id": rid()}, JSON, "unknown_run", ""),
        ("submit", {"agent": "nobody"}, JSON, "unknown_agent", "registered agents"),
        ("submit", {"agent": "big", "run_id": "bad id!"}, JSON, "invalid", "run id"),
        ("result", {"run_id": "x", "wait": 3600}, JSON, "malformed", "wait"),
    ]
    for op, body, headers, code, text in cases:
        got_code, message = await error_of(client, op, body, headers=headers)
        assert (got_code, text.lower() in message.lower()) == (code, True), (op, body, message)

    _, sub = await ask(client, "submit", {"agent": "waiter"})
    big = "y" * (client.settings.signal_max_bytes + 10)
    code, message = await error_of(
        client, "signal", {"run_id": sub["run_id"], "name": "n", "payload": big}
    )
    assert code == "too_large" and "signal_max_bytes" in message
    # An approval of a call the run never asked about sends nothing.
    code, message = await error_of(client, "approve", {"run_id": sub["run_id"], "call_id": "c9"})
    assert code == "refused" and "no pending approval request for call 'c9'" in message
    code, _ = await error_of(client, "signal", {"run_id": sub["run_id"], "name": ""})
    assert code == "refused"
    await ask(client, "cancel", {"run_id": sub["run_id"]})


async def test_redis_down_answers_unavailable(client: Client, settings: Settings) -> None:
    redis = RedisServer()
    redis.start()
    own = Settings(
        nats_url=settings.nats_url,
        redis_url=redis.url,
        namespace=f"{settings.namespace}x",
        connect_timeout=2,
    )
    sup = Supervisor(own, services=[lambda deps: serve_api(deps, timeout=2)])
    await sup.start()
    # A requester of that namespace: the default inbox (_INBOX.), as other languages use.
    nc = await nats.connect(settings.nats_url)
    try:
        subject = f"{own.namespace}.api.status"
        body = json.dumps({"run_id": "r1"}).encode()
        reply = await nc.request(subject, body, headers=JSON, timeout=10)
        assert (reply.headers or {}).get(ERROR_HEADER) == "unknown_run"
        redis.stop()
        reply = await nc.request(subject, body, headers=JSON, timeout=15)
        assert (reply.headers or {}).get(ERROR_HEADER) == "unavailable", reply.data
        assert "no answer from Redis or NATS within 2 s" in json.loads(reply.data)["message"]
    finally:
        await nc.close()
        await asyncio.wait_for(sup.close(), 10)
        redis.stop()


async def test_replies_go_only_to_inboxes(client: Client, wire_workers: WorkerFactory) -> None:
    """A requester picks the reply subject; a worker must not publish with its rights
    anywhere but an inbox (here: a subject of the namespace a viewer could name)."""
    await wire_workers()
    nc = client.broker.nc
    trap = f"{client.settings.namespace}.trap"
    caught = await nc.subscribe(trap)
    body = json.dumps({"run_id": rid()}).encode()
    await nc.publish(client.broker.names.api_subject("status"), body, reply=trap, headers=JSON)
    # The same process answers requests in order of arrival: once a later request is
    # answered, the trapped one was dropped (not merely pending).
    for _ in range(3):
        code, _ = await error_of(client, "status", {"run_id": rid()})
        assert code == "unknown_run"
    await nc.flush()
    assert caught.pending_msgs == 0
    await caught.unsubscribe()


async def test_with_encryption_the_api_seals_inputs_and_never_opens_results(
    client: Client, settings: Settings, servers: Servers, tmp_path: Any
) -> None:
    keys = tmp_path / "keys.json"
    key = base64.b64encode(b"\x07" * 32).decode()
    keys.write_text(json.dumps({"current": "k7", "keys": {"k7": key}}))
    env = {"STALWART_ENCRYPTION_KEYS_FILE": str(keys)}
    async with worker_pool("tests.apps_wire:app", settings, servers, client, **env) as start:
        await start()
        _, sub = await ask(client, "submit", {"agent": "big", "input": 5})
        _, res = await ask(client, "result", {"run_id": sub["run_id"], "wait": 20}, timeout=25)
    assert res["status"] == "completed" and res["data"] == "" and res["size"] == 0
    assert res["error"] == {"type": "PayloadEncrypted", "message": "<encrypted: key k7>"}
    record = await client.store.get_run(sub["run_id"])
    assert record is not None and is_sealed(record.input) and is_sealed(record.result)


async def test_a_full_server_answers_busy_and_a_stopping_one_unavailable(
    client: Client, settings: Settings
) -> None:
    sup = Supervisor(settings, services=[lambda deps: serve_api(deps, max_in_flight=1)])
    await sup.start()
    nc = await nats.connect(settings.nats_url)
    try:
        queued = await client.submit("unserved", 1, require_registered=False)
        api = f"{settings.namespace}.api"
        # A result that waits for a run nobody serves fills the server's one slot. Sent and
        # flushed before the status below: the server reads them in that order.
        inbox = nc.new_inbox()
        replies = await nc.subscribe(inbox)
        body = json.dumps({"run_id": queued.run_id, "wait": 30}).encode()
        await nc.publish(f"{api}.result", body, reply=inbox, headers=JSON)
        await nc.flush()
        status = json.dumps({"run_id": queued.run_id}).encode()
        reply = await nc.request(f"{api}.status", status, headers=JSON, timeout=5)
        assert (reply.headers or {}).get(ERROR_HEADER) == "busy", reply.data
        assert "its maximum of 1 requests at once" in json.loads(reply.data)["message"]
        # Stopping answers the waiting request instead of leaving it to time out.
        await asyncio.wait_for(sup.close(), 15)
        reply = await replies.next_msg(timeout=10)
        assert (reply.headers or {}).get(ERROR_HEADER) == "unavailable"
        assert json.loads(reply.data)["message"] == "the server is stopping: ask again"
    finally:
        await nc.close()
        await asyncio.wait_for(sup.close(), 15)
