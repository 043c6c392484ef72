"""Checks a max-deliveries advisory against the servers before anything is deleted.

Anyone allowed to publish on ``$JS.EVENT.ADVISORY.>`` can forge an advisory, and its body
names the stream and sequence to act on. So nothing in the body is trusted: the stream
must be the runs stream, the consumer one of the per-agent consumers, the sequence a
request that consumer has really delivered, and the message a run request for that
consumer's agent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stalwart._ids import check_agent_name, check_lane
from stalwart.broker._names import Names
from stalwart.builds import check_build, split_lane
from stalwart.messages import RunRequest, decode_request

if TYPE_CHECKING:
    from stalwart.broker import Broker


@dataclass(frozen=True, slots=True)
class Verified:
    """A dead letter that passed every check: delete ``seq`` and fail ``request``'s run."""

    seq: int
    deliveries: int
    request: RunRequest


class Refused(Exception):
    """The advisory does not describe a real dead letter; the message says why."""


async def verify_advisory(broker: Broker, advisory: Any) -> Verified:
    """Return what the advisory names once the servers confirm it; raise :class:`Refused`."""
    agent, lane, seq, deliveries = _parse(broker, advisory)
    names = broker.names
    stream = names.runs_stream
    consumer, subject = names.consumer(agent, lane), names.runs_subject(agent, lane)
    try:
        info = await broker.js.consumer_info(stream, consumer)
    except Exception as exc:
        raise Refused(f"consumer {consumer!r} cannot be read: {exc!r}") from None
    if info.config.filter_subject != subject:
        raise Refused(f"consumer {consumer!r} filters {info.config.filter_subject!r}")
    max_deliver = info.config.max_deliver or 0
    if max_deliver < 1 or deliveries < max_deliver:
        raise Refused(f"deliveries {deliveries} below the consumer's max_deliver {max_deliver}")
    # A request the consumer never delivered cannot have run out of deliveries.
    if info.delivered is None or (info.delivered.stream_seq or 0) < seq:
        raise Refused(f"stream_seq {seq} was never delivered by {consumer!r}")
    try:
        raw = await broker.js.get_msg(stream, seq)
    except Exception:
        raise Refused(f"no message at stream_seq {seq} (already acked or deleted)") from None
    if raw.subject != subject:
        raise Refused(f"message {seq} is on {raw.subject!r}, not {subject!r}")
    try:
        request = decode_request(raw.data or b"")
    except Exception:
        # On the agent's subject but not a request: a dead letter all the same, with no
        # run to fail. The caller deletes it (it would otherwise sit in the queue forever).
        return Verified(seq, deliveries, RunRequest(run_id="", agent=agent))
    if request.agent != agent:
        raise Refused(f"message {seq} is a request for agent {request.agent!r}, not {agent!r}")
    return Verified(seq, deliveries, request)


def _parse(broker: Broker, advisory: Any) -> tuple[str, str, int, int]:
    """(agent, lane, stream_seq, deliveries) from the advisory's body, checked for shape
    only."""
    if not isinstance(advisory, dict):
        raise Refused("advisory is not a JSON object")
    stream, consumer = advisory.get("stream"), advisory.get("consumer")
    seq, deliveries = advisory.get("stream_seq"), advisory.get("deliveries")
    if stream != broker.names.runs_stream:
        raise Refused(f"advisory names stream {stream!r}, not {broker.names.runs_stream!r}")
    head, lane = Names.consumer_lane(consumer) if isinstance(consumer, str) else ("", "")
    agent = _agent_of(broker.names.consumer, head)
    if agent is None or (lane and not _lane_ok(lane)):
        raise Refused(f"consumer {consumer!r} is not a Stalwart agent consumer")
    if type(seq) is not int or type(deliveries) is not int or seq < 1:
        raise Refused(f"bad stream_seq {seq!r} or deliveries {deliveries!r}")
    return agent, lane, seq, deliveries


def _lane_ok(lane: str) -> bool:
    lane, build = split_lane(lane)  # a build lane (``<lane>=<build>``) is a lane too
    try:
        check_lane(lane)
        check_build(build)
    except Exception:
        return False
    return True


def _agent_of(consumer_name: Any, consumer: Any) -> str | None:
    """The agent whose consumer is named ``consumer``, or None when it is no such name."""
    if not isinstance(consumer, str):
        return None
    prefix = consumer_name("")
    agent = consumer.removeprefix(prefix)
    if agent == consumer:
        return None
    try:
        return check_agent_name(agent)
    except Exception:
        return None
