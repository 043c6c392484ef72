"""Run events as NATS protocol bytes, built without nats-py's per-message ``publish``.

A worker publishes about one event per durable step. nats-py's ``Client.publish`` checks
the subject and the reply with a regular expression, checks every header key with another,
strips and re-encodes each header value, formats the ``HPUB`` line and then awaits two more
coroutines, all per message: about a third of the CPU an event costs a worker. An event's
subject, reply and headers are Stalwart's own (validated run ids and agent names, decimal
sequence numbers), so :func:`hpub_command` builds the same bytes directly, and
:func:`hand_to_connection` queues a whole batch of them on the connection as one pending
write, exactly where ``publish`` would have put them one by one. Anything that does not
match the expected shape gets an empty command, and the caller publishes it through
nats-py as before.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from nats.errors import ConnectionClosedError, OutboundBufferLimitError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from nats.aio.client import Client as NATS
    from nats.aio.msg import Msg

    from stalwart.messages import RunEvent

__all__ = ["hand_to_connection", "hpub_command", "plain_subject", "reply_inbox"]

_SUBJECT = re.compile(r"[A-Za-z0-9_.*>$-]{1,512}")
"""What an event or reply subject Stalwart builds consists of (no spaces, no line breaks);
anything else is left to nats-py, which validates it and raises its own error."""

_checked: dict[str, bool] = {}
"""Subjects already matched against ``_SUBJECT`` (a run publishes on a few, many times)."""
_CHECKED_MAX = 65536


def plain_subject(subject: str) -> bool:
    """Whether ``subject`` is of the plain form a prebuilt command may carry (remembered)."""
    ok = _checked.get(subject)
    if ok is None:
        if len(_checked) >= _CHECKED_MAX:
            _checked.clear()
        ok = _checked[subject] = _SUBJECT.fullmatch(subject) is not None
    return ok


def hpub_command(subject: str, reply: str, top: int, event: RunEvent, data: bytes) -> bytes:
    """The ``HPUB`` command nats-py's ``publish(subject, data, reply=reply, headers=...)``
    sends for an event, with headers ``Stalwart-Jseq: <top>`` and, for a journaled event,
    ``Nats-Msg-Id: <run_id>:j<jseq>``; ``b""`` when the subjects are not of the plain form
    this is for (the caller then publishes through nats-py)."""
    known = _checked.get  # a hit needs no Python call: this runs for every event
    run_id = event.run_id
    if (
        not (known(subject) or plain_subject(subject))
        or (reply and not (known(reply) or plain_subject(reply)))
        or not (known(run_id) or plain_subject(run_id))
    ):
        return b""
    if event.jseq:
        hdr = b"NATS/1.0\r\nStalwart-Jseq: %d\r\nNats-Msg-Id: %s:j%d\r\n\r\n" % (
            top,
            event.run_id.encode(),
            event.jseq,
        )
    else:
        hdr = b"NATS/1.0\r\nStalwart-Jseq: %d\r\n\r\n" % top
    return b"HPUB %s %s %d %d\r\n%s%s\r\n" % (
        subject.encode(),
        reply.encode(),
        len(hdr),
        len(hdr) + len(data),
        hdr,
        data,
    )


async def reply_inbox(nc: NATS, cb: Callable[[Msg], Awaitable[None]]) -> str:
    """Subscribe ``cb`` to a fresh wildcard inbox and return its prefix (``<inbox>.``): a
    publisher that asks for many replies names each ``<prefix><token>`` and tells them
    apart by the token, with one subscription instead of one per request."""
    prefix = f"{nc.new_inbox()}."
    await nc.subscribe(prefix + "*", cb=cb)
    return prefix


async def hand_to_connection(nc: NATS, commands: list[bytes]) -> None:
    """Queue ``commands`` on ``nc`` as one pending write, as ``publish`` queues one message.

    Uses nats-py's pending buffer and flusher (``_send_command`` / ``_flush_pending``, the
    two calls its ``_send_publish`` ends with; pinned by tests/test_events_wire.py), so
    reconnect buffering and ordering with other publishes are nats-py's, and keeps its
    message statistics. Raises like ``publish`` on a closed connection or a full buffer.
    """
    if nc.is_closed:
        raise ConnectionClosedError
    cmd = b"".join(commands)
    if not nc.is_connected and (
        nc._max_pending_size <= 0 or len(cmd) + nc._pending_data_size > nc._max_pending_size
    ):
        raise OutboundBufferLimitError
    nc.stats["out_msgs"] += len(commands)
    nc.stats["out_bytes"] += len(cmd)  # nats-py counts payload bytes; close enough for stats
    await nc._send_command(cmd)
    if nc._flush_queue is not None and nc._flush_queue.empty():
        await nc._flush_pending()
