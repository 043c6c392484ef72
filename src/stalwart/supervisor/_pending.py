"""Run requests waiting per agent, read from the agents' consumers, for autoscaling.

Every agent has one durable pull consumer on the runs stream (``Names.consumer``). Its
``num_pending`` (requests not yet delivered to any worker) plus ``num_ack_pending``
(delivered, not yet placed) is the backlog that more workers of that agent would take: the
number an autoscaler scales on (the ``stalwart.requests.pending`` gauge, see
docs/deployment.md). The consumer outlives its workers, so the number is there with zero
workers too, and a scaler can start the first one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stalwart.supervisor._unserved import _consumers as consumers
from stalwart.supervisor._unserved import _filters as filters

if TYPE_CHECKING:
    from nats.js.api import ConsumerInfo

    from stalwart.broker import Broker, Names


async def pending_by_lane(broker: Broker) -> dict[tuple[str, str], int]:
    """``{(agent, lane): num_pending + num_ack_pending}`` over the consumers of the runs
    stream; lane "" is the default lane."""
    return count_pending(await consumers(broker), broker.names)


async def pending_by_agent(broker: Broker) -> dict[str, int]:
    """``{agent: requests waiting}``, every lane of the agent summed."""
    out: dict[str, int] = {}
    for (agent, _), pending in (await pending_by_lane(broker)).items():
        out[agent] = out.get(agent, 0) + pending
    return out


def count_pending(infos: list[ConsumerInfo], names: Names) -> dict[tuple[str, str], int]:
    """Sum each consumer's backlog under the agent and lane its filter subject names. Pure.

    A consumer whose filters name no single agent and lane (no filter, a wildcard, several
    of them) is left out: its backlog cannot be split.
    """
    out: dict[tuple[str, str], int] = {}
    for info in infos:
        found = {_agent_lane(f, names) for f in filters(info)}
        if len(found) != 1 or None in found:
            continue
        key = found.pop()
        assert key is not None
        out[key] = out.get(key, 0) + (info.num_pending or 0) + (info.num_ack_pending or 0)
    return out


def _agent_lane(subject: str, names: Names) -> tuple[str, str] | None:
    """``(agent, lane)`` of a runs subject (``Names.runs_subject``); None for anything else."""
    if not subject.startswith(names.runs_subject("")) or "*" in subject or ">" in subject:
        return None
    agent, lane = names.agent_lane(subject)
    if not agent or "." in lane:
        return None
    return agent, lane
