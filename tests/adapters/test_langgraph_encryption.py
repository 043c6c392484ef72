"""The LangGraph saver under payload encryption: no user value readable in Redis."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any, TypedDict

import pytest

pytest.importorskip("langgraph")
pytest.importorskip("cryptography")

import redis.asyncio as aioredis
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.graph import START, StateGraph
from langgraph.graph.message import add_messages

from stalwart.adapters.langgraph import StalwartSaver, _codec
from stalwart.checkpoints import AesGcmCodec, set_payload_codec
from tests.conftest import Servers

SECRET = "MARKER-" + uuid.uuid4().hex[:12] + "-LGSECRET"


class Chat(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


def answer(state: Chat) -> dict[str, Any]:
    return {"messages": [AIMessage(f"noted {SECRET} #{len(state['messages'])}")]}


def graph(saver: StalwartSaver) -> Any:
    builder = StateGraph(Chat)
    builder.add_node("answer", answer)
    builder.add_edge(START, "answer")
    return builder.compile(checkpointer=saver)


@pytest.fixture
def encrypted() -> Iterator[None]:
    set_payload_codec(AesGcmCodec({"k1": b"\x07" * 32}, "k1"))
    yield
    set_payload_codec(None)


async def stored(url: str, namespace: str) -> list[tuple[bytes, bytes]]:
    """Every field or value of every key of ``namespace``, with its key."""
    r = aioredis.Redis.from_url(url)
    out: list[tuple[bytes, bytes]] = []
    try:
        async for key in r.scan_iter(match=f"{namespace}:*"):
            kind = (await r.type(key)).decode()
            if kind == "hash":
                out += [(key, v) for kv in (await r.hgetall(key)).items() for v in kv]
            elif kind == "string":
                out.append((key, await r.get(key) or b""))
            elif kind == "list":
                out += [(key, v) for v in await r.lrange(key, 0, -1)]
            elif kind == "set":
                out += [(key, v) for v in await r.smembers(key)]
            elif kind == "zset":
                out += [(key, v) for v in await r.zrange(key, 0, -1)]
    finally:
        await r.aclose()
    return out


async def three_turns(url: str, namespace: str) -> list[AnyMessage]:
    saver = StalwartSaver.from_url(url, namespace=namespace)
    try:
        app = graph(saver)
        config: Any = {"configurable": {"thread_id": "t1"}}
        for n in range(3):
            await app.ainvoke({"messages": [HumanMessage(f"turn {n}: {SECRET}")]}, config)
        # Pending writes too: an interrupted-looking write the saver stores as it is.
        state = await app.aget_state(config)
        await saver.aput_writes(state.config, [("messages", [HumanMessage(SECRET)])], "task-1")
        return list(state.values["messages"])
    finally:
        await saver.aclose()


async def test_checkpoints_values_and_writes_are_sealed_and_read_back(
    servers: Servers, encrypted: None
) -> None:
    namespace = "lgenc" + uuid.uuid4().hex[:6]
    messages = await three_turns(servers.redis_url, namespace)
    assert [m.content for m in messages][-1] == f"noted {SECRET} #5"
    assert len(messages) == 6
    everything = await stored(servers.redis_url, namespace)
    assert everything and not [k for k, v in everything if SECRET.encode() in v + k]
    # The message list is still stored as deltas (the new messages only), sealed.
    blobs = [v for k, v in everything if b":lg:bl:" in k]
    assert any(_codec.blob_base(b) for b in blobs)
    # A new saver (another process, same key) reads everything back.
    saver = StalwartSaver.from_url(servers.redis_url, namespace=namespace)
    try:
        state = await graph(saver).aget_state({"configurable": {"thread_id": "t1"}})
        assert [m.content for m in state.values["messages"]] == [m.content for m in messages]
        assert [w[1] for w in (await saver.aget_tuple(state.config)).pending_writes] == [  # type: ignore[union-attr]
            "messages"
        ]
    finally:
        await saver.aclose()


async def test_without_encryption_the_search_finds_the_marker(servers: Servers) -> None:
    namespace = "lgclr" + uuid.uuid4().hex[:6]
    await three_turns(servers.redis_url, namespace)
    assert [k for k, v in await stored(servers.redis_url, namespace) if SECRET.encode() in v]


async def test_the_conformance_suite_passes_with_encryption_on(
    servers: Servers, encrypted: None
) -> None:
    @checkpointer_test(name="StalwartSaver, encrypted")
    async def factory() -> AsyncIterator[StalwartSaver]:
        s = StalwartSaver.from_url(servers.redis_url, namespace="cenc" + uuid.uuid4().hex[:8])
        yield s
        await s.aclose()

    report = await validate(factory)
    failures = {cap: r.failures for cap, r in report.results.items() if not r.passed}
    assert not failures, failures
