"""The ``stalwart.requests.pending`` gauge: run requests waiting per agent, for autoscalers.

Read by the leading supervisor from each agent's consumer (``num_pending +
num_ack_pending``), exported on its Prometheus endpoint as ``stalwart_requests_pending``,
the name the HPA's prometheus-adapter rule in deploy/kubernetes/ relies on.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from nats.js.api import ConsumerConfig, ConsumerInfo

from stalwart.broker import Broker, Names
from stalwart.broker._setup import ensure_agent_consumer
from stalwart.supervisor import _telemetry as supervisor_telemetry
from stalwart.supervisor._pending import count_pending
from stalwart.telemetry import _metrics
from stalwart.testing import free_port
from tests.helpers import eventually
from tests.test_observability import _serving, _supervisor_process, reaches

if TYPE_CHECKING:
    from stalwart import Client, Settings
    from tests.conftest import WorkerFactory


def _info(name: str, pending: int, ack_pending: int, *subjects: str) -> ConsumerInfo:
    one, many = (subjects[0], None) if len(subjects) == 1 else (None, list(subjects))
    return ConsumerInfo(
        name=name,
        stream_name="NS_RUNS",
        created=None,
        config=ConsumerConfig(durable_name=name, filter_subject=one, filter_subjects=many),
        num_pending=pending,
        num_ack_pending=ack_pending,
    )


def test_pending_is_summed_per_agent_and_lane_from_single_lane_consumers() -> None:
    infos = [
        _info("agent_a", 3, 2, "ns.runs.a"),
        _info("agent_b", 0, 0, "ns.runs.b"),
        _info("again_a", 1, 0, "ns.runs.a"),  # a second consumer of the same agent
        _info("agent_a@hi", 4, 1, "ns.runs.a.hi"),  # a lane: its own series, never "a.hi"
        _info("two", 7, 0, "ns.runs.a", "ns.runs.b"),  # cannot be split: left out
        _info("two_lanes", 7, 0, "ns.runs.a.hi", "ns.runs.a.lo"),
        _info("wild", 9, 0, "ns.runs.>"),
        _info("wild_lane", 9, 0, "ns.runs.a.*"),
        _info("deep", 9, 0, "ns.runs.a.hi.x"),
        _info("other", 9, 0, "elsewhere.x"),
    ]
    assert count_pending(infos, Names("ns")) == {("a", ""): 6, ("b", ""): 0, ("a", "hi"): 5}


class _Sup:
    def __init__(self, supervisor_id: str, leader: bool) -> None:
        self.supervisor_id = supervisor_id
        self.is_leader = leader
        # Its id as agent: to tell them apart.
        self.pending_requests = {(supervisor_id, ""): 4, (supervisor_id, "hi"): 1}


def test_only_the_leader_reports_pending() -> None:
    tag = uuid.uuid4().hex[:8]
    leader, standby = _Sup(f"lead-{tag}", True), _Sup(f"standby-{tag}", False)
    supervisor_telemetry.watch_supervisor(leader)
    supervisor_telemetry.watch_supervisor(standby)
    try:
        observed = [
            (o.value, dict(o.attributes or {}))
            for o in _metrics._pending_requests(None)  # type: ignore[arg-type]
            if str((o.attributes or {}).get("agent", "")).endswith(tag)
        ]
        assert observed == [
            (4, {"agent": f"lead-{tag}", "lane": "default"}),
            (1, {"agent": f"lead-{tag}", "lane": "hi"}),
        ]
    finally:
        del leader, standby  # weak references: the gauges forget them


async def test_pending_requests_are_exported_and_fall_as_a_worker_takes_them(
    client: Client, settings: Settings, workers: WorkerFactory
) -> None:
    # The agent's consumer exists (a worker served it once) but no worker runs now.
    broker = await Broker.connect(settings)
    try:
        await broker.register_agents(["ten"], "tests.apps:app")
        await ensure_agent_consumer(broker.js, broker.names, settings, "ten")
        await ensure_agent_consumer(broker.js, broker.names, settings, "ten", "hi")
    finally:
        await broker.close()
    for i in range(3):
        await client.submit("ten", {"block_in": 0}, run_id=f"pend-{settings.namespace}-{i}")
    # A lane no worker has served yet (its consumer exists): its backlog is its own series.
    hi = f"pend-{settings.namespace}-hi"
    await client.submit("ten", {"block_in": 0}, run_id=hi, lane="hi", require_registered=False)
    port = free_port()
    sup = _supervisor_process(settings, port).start()
    try:
        await eventually(lambda: _serving(port), timeout=20, message=lambda: sup.log_text())
        await reaches(port, "stalwart_requests_pending", 3, agent="ten", lane="default")
        await reaches(port, "stalwart_requests_pending", 1, agent="ten", lane="hi")
        await workers("p1")
        await reaches(port, "stalwart_requests_pending", 0, agent="ten", lane="default")
        await reaches(port, "stalwart_requests_pending", 1, agent="ten", lane="hi")
    finally:
        sup.close()
