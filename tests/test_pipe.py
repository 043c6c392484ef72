"""The auto-pipelined journal connection, against real redis-server processes."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from typing import TYPE_CHECKING

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from stalwart.checkpoints import CheckpointStore, Started, encode_value
from stalwart.checkpoints._pipe import ScriptPipe
from stalwart.errors import LeaseLost
from stalwart.testing import RedisServer
from tests.helpers import eventually, step_done

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from tests.conftest import Servers


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test alone (it gets killed, paused or locked)."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def pipe(servers: Servers) -> AsyncIterator[ScriptPipe]:
    p = ScriptPipe(servers.redis_url)
    try:
        yield p
    finally:
        await p.close()


async def test_concurrent_calls_get_their_own_replies_in_few_writes(pipe: ScriptPipe) -> None:
    key = f"pipe:{uuid.uuid4().hex}"
    replies = await asyncio.gather(*(pipe.call("INCR", key) for _ in range(500)))
    # Redis answers a connection in order: the n-th call made is the n-th increment.
    assert replies == list(range(1, 501))
    # Calls made while others were outstanding went out together, not one write each.
    assert pipe.writes < 50, pipe.writes


async def test_error_replies_are_values_and_do_not_break_the_stream(pipe: ScriptPipe) -> None:
    key = f"pipe:{uuid.uuid4().hex}"
    bad, good = await asyncio.gather(pipe.call("NOSUCHCOMMAND"), pipe.call("SET", key, b"v"))
    assert isinstance(bad, ResponseError)
    assert good == b"OK"
    assert await pipe.call("GET", key) == b"v"


async def test_auth_and_db_come_from_the_url(own_redis: RedisServer) -> None:
    admin = aioredis.Redis(host="127.0.0.1", port=own_redis.port)
    try:
        await admin.execute_command("ACL", "SETUSER", "bob", "on", ">s3cret", "~*", "+@all")
        await admin.config_set("requirepass", "topsecret")
    finally:
        await admin.aclose()
    base = f"127.0.0.1:{own_redis.port}"
    for url in (f"redis://bob:s3cret@{base}/3", f"redis://:topsecret@{base}/3"):
        p = ScriptPipe(url)
        try:
            # Calls made while AUTH and SELECT are under way wait behind them.
            calls = [p.call("INCR", f"n:{url}")]
            # Spin turn by turn: the window is one round trip, an event would be too late.
            while p._transport is None:  # noqa: ASYNC110
                # connected, setup commands not yet answered
                await asyncio.sleep(0)
            calls += [p.call("INCR", f"n:{url}") for _ in range(19)]
            assert await asyncio.gather(*calls) == list(range(1, 21))
            assert await p.call("SET", "who", url.encode()) == b"OK"
        finally:
            await p.close()
        check = aioredis.Redis.from_url(url)
        try:
            assert await check.get("who") == url.encode()  # db 3, where the pipe wrote
        finally:
            await check.aclose()
    wrong = ScriptPipe(f"redis://bob:nope@{base}/0")
    try:
        with pytest.raises(RedisConnectionError, match="refused AUTH"):
            await wrong.call("PING")
    finally:
        await wrong.close()


async def test_pipe_reconnects_after_a_redis_restart(own_redis: RedisServer) -> None:
    p = ScriptPipe(own_redis.url)
    try:
        assert await p.call("PING") == b"PONG"
        own_redis.kill()
        with pytest.raises(RedisConnectionError):
            await p.call("PING")
        await asyncio.to_thread(own_redis.restart)

        async def pings() -> bool:
            try:
                return bool(await p.call("PING") == b"PONG")
            except RedisConnectionError:
                return False

        await eventually(pings, timeout=10)
    finally:
        await p.close()


async def test_a_redis_that_stops_answering_times_out(own_redis: RedisServer) -> None:
    p = ScriptPipe(own_redis.url, request_timeout=0.5)
    pid = own_redis.pid
    assert pid is not None
    try:
        assert await p.call("PING") == b"PONG"
        os.kill(pid, signal.SIGSTOP)
        try:
            with pytest.raises(RedisTimeoutError, match="no reply from Redis"):
                await asyncio.wait_for(p.call("PING"), 10)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert await p.call("PING") == b"PONG"  # a new connection
    finally:
        await p.close()


async def test_closed_pipe_fails_calls(servers: Servers) -> None:
    p = ScriptPipe(servers.redis_url)
    await p.close()
    with pytest.raises(RedisConnectionError, match="closed"):
        await p.call("PING")


def test_only_plain_redis_urls_get_a_pipe() -> None:
    assert ScriptPipe.supports("redis://127.0.0.1:6390/0")
    assert ScriptPipe.supports("rediss://h:1")
    assert ScriptPipe.supports("unix:///tmp/redis.sock?db=2")
    assert not ScriptPipe.supports("redis+sentinel://h:26379/mymaster")
    with pytest.raises(ValueError, match="scheme"):
        ScriptPipe("http://127.0.0.1:6379")


async def test_append_future_fencing_and_resend_through_the_pipe(servers: Servers) -> None:
    store = await CheckpointStore.connect(servers.redis_url, f"t{uuid.uuid4().hex[:8]}")
    try:
        rid = f"r-{uuid.uuid4().hex[:8]}"
        await store.create_run(rid, "a", encode_value(None))
        claim = await store.claim(rid, agent="a", input=encode_value(None), epoch=1, worker="w1")
        assert claim.outcome == "ok" and claim.seq == 1
        entry = step_done("s", 2, epoch=1)
        assert await store.append_future(rid, 1, 2, entry) == ""
        # The same entry at the same position (a resend after a lost reply) is recognised.
        assert await store.append_future(rid, 1, 2, entry) == ""
        journal = await store.read_journal(rid)
        assert [je.seq for je in journal] == [1, 2]
        assert isinstance(journal[0].entry, Started)
        assert journal[1].entry == entry
        # A newer epoch fences the old owner out.
        assert (
            await store.claim(rid, agent="a", input=encode_value(None), epoch=2, worker="w2")
        ).outcome == "ok"
        with pytest.raises(LeaseLost, match="epoch 1 no longer owns"):
            await store.append_future(rid, 1, 4, step_done("t", 4, epoch=1))
        # A cancellation is reported on the next append of the owner.
        assert await store.request_cancel(rid, "stop") == "requested"
        assert await store.append_future(rid, 2, 4, step_done("t", 4, epoch=1)) == "stop"
    finally:
        await store.close()


async def test_append_future_survives_a_script_cache_flush(servers: Servers) -> None:
    """After a Redis restart the script cache is empty: EVALSHA fails, the slow path loads."""
    store = await CheckpointStore.connect(servers.redis_url, f"t{uuid.uuid4().hex[:8]}")
    try:
        rid = f"r-{uuid.uuid4().hex[:8]}"
        await store.create_run(rid, "a", encode_value(None))
        await store.claim(rid, agent="a", input=encode_value(None), epoch=1, worker="w1")
        await store.redis.script_flush()
        assert await store.append_future(rid, 1, 2, step_done("s", 2, epoch=1)) == ""
        assert [je.seq for je in await store.read_journal(rid)] == [1, 2]
    finally:
        await store.close()


async def test_a_pipelined_append_lands_even_when_its_waiter_is_cancelled(
    servers: Servers,
) -> None:
    """The step task is cancelled while its append is in flight: the append is not
    abandoned, and the cancellation arrives with the outcome so the position moves on."""
    from stalwart.actors._journal import _uncancellable, _WrittenThenCancelled

    store = await CheckpointStore.connect(servers.redis_url, f"t{uuid.uuid4().hex[:8]}")
    try:
        rid = f"r-{uuid.uuid4().hex[:8]}"
        await store.create_run(rid, "a", encode_value(None))
        await store.claim(rid, agent="a", input=encode_value(None), epoch=1, worker="w1")
        fut = store.append_future(rid, 1, 2, step_done("s", 2, epoch=1))
        task = asyncio.create_task(_uncancellable(fut))
        await asyncio.sleep(0)  # the task now waits on the append
        assert not fut.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError) as info:
            await task
        assert fut.done() and not fut.cancelled()  # settled, not abandoned
        assert isinstance(info.value, _WrittenThenCancelled) and info.value.value == ""
        assert [je.seq for je in await store.read_journal(rid)] == [1, 2]
    finally:
        await store.close()
