"""The NATS subjects each role may publish and subscribe to, for one namespace.

Derived from :class:`~stalwart.broker.Names`, so they follow the names Stalwart really uses.
JetStream is reached through subjects too: every API call (``$JS.API.<...>``), every KV write
(``$KV.<bucket>.<key>``), every ack (``$JS.ACK.<stream>.<consumer>.>``) and every flow-control
reply (``$JS.FC.<stream>.>``) is a publish the server checks. Replies come back on the
namespace's inbox prefix (``_INBOX_<ns>``, see :func:`inbox_prefix`), so users of other
namespaces in the same account cannot read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from stalwart._ids import check_namespace
from stalwart.broker._names import Names

RoleName = Literal["admin", "supervisor", "worker", "client", "viewer"]
ROLES: tuple[RoleName, ...] = get_args(RoleName)

_API = "$JS.API"


def inbox_prefix(namespace: str) -> str:
    """The reply-subject prefix of every process of ``namespace`` (``_INBOX_<ns>``)."""
    return Names(namespace).inbox_prefix


@dataclass(frozen=True, slots=True)
class NatsPermissions:
    """Subjects a role may publish to and subscribe to (NATS wildcards)."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    allow_responses: bool = False
    """Whether the user may answer a request it received (one reply to its reply subject,
    whatever that is): how a worker answers the supervisor's liveness probe without the
    right to publish into other processes' inboxes."""


def _unique(*groups: list[str]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for group in groups:
        for subject in group:
            seen.setdefault(subject, None)
    return tuple(seen)


def _pieces(n: Names) -> dict[str, list[str]]:
    """Named groups of subjects; the roles are made of them."""
    runs, events = n.runs_stream, n.events_stream
    leases, workers, agents = n.lease_stream, n.workers_stream, n.kv_stream(n.agents_bucket)
    ns = n.namespace
    return {
        # Every process looks the topology up when it connects (creating nothing).
        "lookup": [f"{_API}.STREAM.INFO.{s}" for s in (runs, events, leases, workers, agents)],
        # Reading stored events (one message get per event) and following them live (an
        # ordered consumer: created, flow-controlled, deleted by the follower).
        "read_events": [
            f"{_API}.STREAM.MSG.GET.{events}",
            f"{_API}.DIRECT.GET.{events}",
            f"{_API}.DIRECT.GET.{events}.>",
        ],
        "follow_events": [
            f"{_API}.CONSUMER.CREATE.{events}",
            f"{_API}.CONSUMER.CREATE.{events}.>",
            f"{_API}.CONSUMER.INFO.{events}.*",
            f"{_API}.CONSUMER.DELETE.{events}.*",
            f"$JS.FC.{events}.>",
        ],
        # The agent registry: clients refuse agents no worker serves.
        "read_agents": [f"{_API}.STREAM.MSG.GET.{agents}", f"{_API}.DIRECT.GET.{agents}.>"],
        # Worker heartbeats (read by `stalwart dev` and tools that list workers).
        "read_workers": [
            f"{_API}.STREAM.MSG.GET.{workers}",
            f"{_API}.DIRECT.GET.{workers}.>",
            f"{_API}.CONSUMER.CREATE.{workers}",
            f"{_API}.CONSUMER.CREATE.{workers}.>",
            f"{_API}.CONSUMER.INFO.{workers}.*",
            f"{_API}.CONSUMER.DELETE.{workers}.*",
            f"$JS.FC.{workers}.>",
        ],
        # Who owns each run now and how many requests wait per agent (stalwart.operations):
        # reads of the lease keys and of the runs stream's consumers, nothing written.
        "read_fleet": [
            f"{_API}.STREAM.MSG.GET.{leases}",
            f"{_API}.DIRECT.GET.{leases}.>",
            f"{_API}.CONSUMER.INFO.{runs}.*",
            f"{_API}.CONSUMER.LIST.{runs}",
            f"{_API}.CONSUMER.NAMES.{runs}",
        ],
        "submit": [n.runs_wildcard],
        # The control API (stalwart.api): clients ask for everything, viewers only read.
        "api": [n.api_wildcard],
        "api_read": [n.api_subject("status"), n.api_subject("result")],
        # Workers' and supervisors' events, and clients' announcements, on separate
        # subjects: a client cannot publish where workers do.
        "announce": [n.events_from("sys")],
        "client_announce": [n.events_from("client")],
        "poke": [f"{ns}.signals.>"],
        "reject": [n.rejected_wildcard],
        # A worker pulls from its agents' durable consumers and acks what it got.
        "consume": [
            f"{_API}.CONSUMER.INFO.{runs}.*",
            f"{_API}.CONSUMER.MSG.NEXT.{runs}.*",
            f"$JS.ACK.{runs}.>",
        ],
        # Run leases only (keys run.<run_id>): not the supervisors' election keys.
        "run_leases": [
            n.kv_subject(n.lease_bucket, "run.>"),
            f"{_API}.STREAM.MSG.GET.{leases}",
            f"{_API}.DIRECT.GET.{leases}.>",
        ],
        "all_leases": [n.kv_subject(n.lease_bucket)],
        "watch_leases": [
            f"{_API}.CONSUMER.CREATE.{leases}",
            f"{_API}.CONSUMER.CREATE.{leases}.>",
            f"{_API}.CONSUMER.INFO.{leases}.*",
            f"{_API}.CONSUMER.DELETE.{leases}.*",
            f"$JS.FC.{leases}.>",
        ],
        "register": [n.kv_subject(n.workers_bucket), n.kv_subject(n.agents_bucket)],
        # Liveness probes: the supervisor asks each lease holder on its own subject
        # (a dead worker's runs are re-placed before its leases expire).
        "probe_workers": [n.alive_wildcard],
        # Dead letters: the supervisor reads a request JetStream gave up on and deletes it;
        # it lists consumers to find requests no worker serves.
        "dead_letters": [
            f"{_API}.CONSUMER.INFO.{runs}.*",
            f"{_API}.CONSUMER.LIST.{runs}",
            f"{_API}.CONSUMER.NAMES.{runs}",
            f"{_API}.STREAM.MSG.GET.{runs}",
            f"{_API}.STREAM.MSG.DELETE.{runs}",
        ],
        # Creating, updating and deleting the namespace's streams, buckets and consumers.
        "provision": [
            f"{_API}.INFO",  # account limits, asked before a KV bucket is made
            *(
                f"{_API}.STREAM.{op}.{s}"
                for op in ("CREATE", "UPDATE", "DELETE", "PURGE")
                for s in (runs, events, leases, workers, agents)
            ),
            f"{_API}.CONSUMER.CREATE.{runs}.>",
            f"{_API}.CONSUMER.DURABLE.CREATE.{runs}.>",
            f"{_API}.CONSUMER.DELETE.{runs}.*",
        ],
    }


def nats_permissions(role: RoleName, namespace: str) -> NatsPermissions:
    """The permissions of ``role`` in ``namespace`` (see docs/security.md)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
    check_namespace(namespace)
    n = Names(namespace)
    p = _pieces(n)
    inbox = [f"{inbox_prefix(namespace)}.>"]
    live_events = [n.events_wildcard]
    advisories = [n.max_deliveries_advisories]
    signals = [f"{namespace}.signals.>"]
    # A worker answers the supervisor's liveness probes on its own subject. Any worker may
    # subscribe to any worker's (the subject is derived from the worker id, which the
    # server cannot check); one answering for a dead peer only delays that peer's failover
    # to its lease TTL, and workers are trusted with the leases anyway.
    alive = [n.alive_wildcard]
    # Workers and supervisors serve the control API in one queue group (stalwart.api).
    api = [n.api_wildcard]
    reader = ["lookup", "read_events", "follow_events", "read_agents", "read_workers", "read_fleet"]
    pub: dict[RoleName, list[str]] = {
        "viewer": [*reader, "api_read"],
        "client": [*reader, "submit", "client_announce", "poke", "api"],
        "worker": [
            "lookup",
            "read_events",
            "read_agents",
            "consume",
            "submit",
            "announce",
            "client_announce",  # what the API serves announces as a client would
            "reject",
            "poke",
            "run_leases",
            "register",
        ],
        "supervisor": [
            "lookup",
            "read_events",
            "read_agents",
            "dead_letters",
            "submit",
            "announce",
            "client_announce",
            "reject",
            "poke",
            "run_leases",
            "all_leases",
            "watch_leases",
            "probe_workers",
        ],
    }
    sub: dict[RoleName, list[str]] = {
        "viewer": [*inbox, *live_events],
        "client": [*inbox, *live_events],
        # Serving the API's `result` with `wait` watches the run's events (as a client).
        "worker": [*inbox, *signals, *alive, *api, *live_events],
        "supervisor": [*inbox, *advisories, *api, *live_events],
    }
    if role == "admin":
        groups = {g for r in pub.values() for g in r} | {"provision"}
        order = [g for g in p if g in groups]
        return NatsPermissions(
            publish=_unique(*(p[g] for g in order)),
            subscribe=_unique(*sub.values()),
            allow_responses=True,
        )
    return NatsPermissions(
        publish=_unique(*(p[g] for g in pub[role])),
        subscribe=_unique(sub[role]),
        # Workers answer liveness probes; workers and supervisors answer API requests.
        allow_responses=role in ("worker", "supervisor"),
    )


def render_nats_permissions(role: RoleName, namespace: str) -> str:
    """A nats-server config block: a variable holding ``role``'s permissions in ``namespace``.

    Use it in a user entry (``permissions: $STALWART_<NS>_<ROLE>``) after an ``include`` of
    the file, in ``authorization { users = [...] }`` or in an account's ``users``.
    """
    perms = nats_permissions(role, namespace)
    var = f"STALWART_{namespace.upper()}_{role.upper()}"

    def block(subjects: tuple[str, ...]) -> str:
        return "\n".join(f'      "{s}"' for s in subjects)

    return (
        f"# Stalwart role {role!r}, namespace {namespace!r}: NATS permissions.\n"
        f"# Generated by: stalwart security nats-permissions --role {role} "
        f"--namespace {namespace}\n"
        f"# Use: include this file, then permissions: ${var} in the user's entry.\n"
        f"{var} = {{\n"
        f"  publish = {{\n    allow = [\n{block(perms.publish)}\n    ]\n  }}\n"
        f"  subscribe = {{\n    allow = [\n{block(perms.subscribe)}\n    ]\n  }}\n"
        + ("  allow_responses = true\n" if perms.allow_responses else "")
        + "}\n"
    )
