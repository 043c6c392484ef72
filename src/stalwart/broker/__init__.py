"""NATS: connection, topology, leases, run requests and run events. Knows nothing of agents or Redis."""

from stalwart.broker._broker import Broker, WorkerInfo
from stalwart.broker._connect import MIN_SERVER_VERSION, check_server_version, connect
from stalwart.broker._events import JSEQ_HEADER, EventPublisher, subscribe_events
from stalwart.broker._lease import Lease, LeaseManager, LeaseState
from stalwart.broker._names import Names
from stalwart.broker._setup import ensure_agent_consumer, ensure_topology

__all__ = [
    "JSEQ_HEADER",
    "MIN_SERVER_VERSION",
    "Broker",
    "EventPublisher",
    "Lease",
    "LeaseManager",
    "LeaseState",
    "Names",
    "WorkerInfo",
    "check_server_version",
    "connect",
    "ensure_agent_consumer",
    "ensure_topology",
    "subscribe_events",
]
