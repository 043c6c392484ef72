"""Rejects run requests that no worker serves, so none waits in the runs stream forever.

A request published for an agent no worker ever served has no consumer on its subject:
JetStream never delivers it, so it never reaches ``max_deliver`` and never produces an
advisory. The supervisor finds such subjects, and rejects their requests once they have
waited ``unserved_after`` seconds, the way ``Client.submit`` refuses an unknown agent: a
``request.rejected`` event on the run's subject, the run (if it has a record and no worker
placed it) ended rejected (``RequestRejected``; ``result()`` raises ``RunRejected``), and the message removed.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

import structlog
from nats.js.errors import NotFoundError

from stalwart._ids import check_run_id
from stalwart.conversations import release_ended
from stalwart.messages import (
    EV_REJECTED,
    RequestRejectedData,
    RunEvent,
    data_dict,
    decode_request,
)

if TYPE_CHECKING:
    from nats.js.api import ConsumerInfo, RawStreamMsg

    from stalwart.broker import Broker
    from stalwart.checkpoints import CheckpointStore

log = structlog.get_logger("stalwart.supervisor")

MAX_PER_PASS = 500
"""Requests rejected in one pass at most, so a pass stays short; the next goes on."""


async def reject_unserved(broker: Broker, store: CheckpointStore, unserved_after: float) -> int:
    """Reject requests that waited ``unserved_after`` seconds on a subject nothing consumes."""
    if unserved_after <= 0:
        return 0
    names, js = broker.names, broker.js
    try:
        info = await js.stream_info(names.runs_stream, subjects_filter=names.runs_wildcard)
    except NotFoundError:
        return 0
    subjects = sorted((info.state.subjects or {}).keys())
    if not subjects:
        return 0
    filters = [f for c in await _consumers(broker) for f in _filters(c)]
    cutoff = time.time() - unserved_after
    rejected = 0
    for subject in subjects:
        if any(_matches(f, subject) for f in filters):
            continue
        while rejected < MAX_PER_PASS:
            try:
                raw = await js.get_msg(names.runs_stream, seq=1, subject=subject, next=True)
            except NotFoundError:
                break
            if raw.time is not None and raw.time.timestamp() > cutoff:
                break  # this subject's oldest request is still young enough to wait
            if await _reject(broker, store, subject, raw, unserved_after):
                rejected += 1
    return rejected


async def _reject(
    broker: Broker, store: CheckpointStore, subject: str, raw: RawStreamMsg, after: float
) -> bool:
    names = broker.names
    agent, _ = names.agent_lane(subject)
    reason = f"no worker serves agent {agent!r}: nothing consumed its request for {after:g}s"
    assert raw.seq is not None
    try:
        # Deleting first: whoever deletes it owns its fate (a worker that raced us to it
        # acked it instead, and the record tells us below).
        await broker.js.delete_msg(names.runs_stream, raw.seq)
    except Exception:
        return False
    try:
        run_id = check_run_id(decode_request(raw.data or b"").run_id)
    except Exception:
        run_id = ""
    event = RunEvent(
        type=EV_REJECTED,
        run_id=run_id,
        at=time.time(),
        data=data_dict(RequestRejectedData(reason=reason, agent=agent, stream_seq=raw.seq)),
        agent=agent,
    )
    if not run_id:
        log.warning("request.unserved_undecodable", agent=agent, stream_seq=raw.seq)
        await broker.events.publish_rejection(agent, event)
        return True
    if await store.reject(run_id, agent, reason) == "skipped":
        return True  # a worker placed it after all, or it ended: nothing to reject
    log.warning("request.unserved", run_id=run_id, agent=agent, reason=reason)
    with contextlib.suppress(Exception):  # else a waiting run's re-check repairs it
        await release_ended(store, broker, run_id)
    await broker.events.publish(event, acked=True)
    return True


async def _consumers(broker: Broker) -> list[ConsumerInfo]:
    """Every consumer of the runs stream (the server lists them in pages of 256)."""
    found: list[ConsumerInfo] = []
    while True:
        page = await broker.js.consumers_info(broker.names.runs_stream, offset=len(found))
        if not page:
            return found
        found.extend(page)


def _filters(consumer: ConsumerInfo) -> list[str]:
    one = consumer.config.filter_subject
    many = consumer.config.filter_subjects or []
    if not one and not many:
        return [">"]  # a consumer without a filter consumes every subject
    return [f for f in [one, *many] if f]


def _matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` is one token, a final ``>`` one or more."""
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)
