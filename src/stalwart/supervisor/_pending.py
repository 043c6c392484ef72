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

    from stalwart.broker import Broker


async def pending_by_agent(broker: Broker) -> dict[str, int]:
    """``{agent: num_pending + num_ack_pending}`` over the consumers of the runs stream."""
    return count_pending(await consumers(broker), broker.names.runs_subject(""))


def count_pending(infos: list[ConsumerInfo], subject_prefix: str) -> dict[str, int]:
    """Sum each consumer's backlog under the agent its filter subject names. Pure.

    A consumer whose filters name no single agent (no filter, a wildcard, several agents)
    is left out: its backlog cannot be split between agents.
    """
    out: dict[str, int] = {}
    for info in infos:
        agents = {_agent(f, subject_prefix) for f in filters(info)}
        if len(agents) != 1 or "" in agents:
            continue
        agent = agents.pop()
        out[agent] = out.get(agent, 0) + (info.num_pending or 0) + (info.num_ack_pending or 0)
    return out


def _agent(subject: str, prefix: str) -> str:
    """The agent of a runs subject ``<ns>.runs.<agent>``; "" for anything else."""
    if not subject.startswith(prefix):
        return ""
    rest = subject[len(prefix) :]
    return "" if not rest or "*" in rest or ">" in rest else rest
