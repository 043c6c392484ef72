"""Server-sent events: a run's events, or all runs' events, as the browser's EventSource reads.

Each stream pumps the client's event iterator into a queue from a task of its own, so the
response can send a comment every :data:`PING_SECONDS` while nothing happens (proxies close
idle connections) without cancelling the iterator mid-read. At most :data:`MAX_STREAMS`
are open at once: a page left open in many tabs must not take every NATS consumer.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from starlette.responses import Response, StreamingResponse

from stalwart._tasks import cancel_and_wait
from stalwart._text import clip, safe_text
from stalwart.console._http import encode, error

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from stalwart.client import Client

PING_SECONDS = 15.0
MAX_STREAMS = 64
_END = object()


class EventStreams:
    """Opens SSE responses over one :class:`Client` and closes them all at shutdown."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._open: set[asyncio.Task[None]] = set()

    def run(self, run_id: str) -> Response:
        """The events of ``run_id`` from its first one, live until it ends."""
        return self._respond(lambda: self.client.handle(run_id).events(follow=True))

    def parts(self, run_id: str) -> Response:
        """The streamed output of ``run_id`` with resets applied (``RunHandle.stream``), each
        part as its ``to_dict()``: a reconnecting page starts over from the first part."""
        return self._respond(lambda: _parts(self.client, run_id))

    def all(self, agent: str | None, after: int | None) -> Response:
        """Every run's events (of ``agent`` when given) after stream sequence ``after``;
        from now on when ``after`` is None (a page wants what happens next, not history)."""
        return self._respond(lambda: _live(self.client, agent, after))

    def _respond(self, open_events: Any) -> Response:
        if len(self._open) >= MAX_STREAMS:
            return error(503, f"too many live event streams (at most {MAX_STREAMS})")
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=256)
        pump = asyncio.create_task(_pump(open_events, queue))
        self._open.add(pump)
        pump.add_done_callback(self._open.discard)
        headers = {"x-accel-buffering": "no", "cache-control": "no-store"}
        return StreamingResponse(
            _frames(queue, pump), media_type="text/event-stream", headers=headers
        )

    async def close(self) -> None:
        """Stop every open stream (server shutdown)."""
        await cancel_and_wait(list(self._open))


async def _live(client: Client, agent: str | None, after: int | None) -> AsyncIterator[Any]:
    if after is None:
        broker = client.broker
        after = int((await broker.js.stream_info(broker.names.events_stream)).state.last_seq)
    async for event in client.events(agent=agent, after=after, follow=True):
        yield event


async def _parts(client: Client, run_id: str) -> AsyncIterator[Any]:
    async for part in client.handle(run_id).stream(follow=True):
        yield part.to_dict()


async def _pump(open_events: Any, queue: asyncio.Queue[Any]) -> None:
    try:
        async for event in open_events():
            await queue.put(event)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # told to the page as an event, not a silent end
        await queue.put(exc)
    await queue.put(_END)


async def _frames(queue: asyncio.Queue[Any], pump: asyncio.Task[None]) -> AsyncIterator[bytes]:
    try:
        yield b"retry: 3000\n\n"
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), PING_SECONDS)
            except TimeoutError:
                yield b": ping\n\n"
                continue
            if item is _END:
                yield b"event: end\ndata: {}\n\n"
                return
            if isinstance(item, Exception):
                message = clip(safe_text(item), 500)
                yield b"event: failure\ndata: " + encode({"error": message}) + b"\n\n"
                return
            seq = getattr(item, "seq", 0)
            head = f"id: {seq}\n".encode() if seq else b""
            yield head + b"data: " + encode(item) + b"\n\n"
    finally:
        pump.cancel()
