"""Names of streams, buckets, subjects, consumers and message ids, all derived from one namespace.

Every NATS name and every ``Nats-Msg-Id`` Stalwart uses is spelled here and nowhere else.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from typing import Literal, get_args

from stalwart.messages import NO_AGENT_TOKEN

ResumeCause = Literal["resume", "timer", "wake", "signal", "cancel"]
"""Why a resume request is published (see :func:`resume_msg_id`).

``resume``: the epoch's owner is gone (its lease expired, or it handed the run over while
draining); ``timer``: a passivated run's timer is due; ``wake``: the owner that just
passivated the run found a signal that raced it; ``signal``: a signal found the run
passivated waiting for it; ``cancel``: a cancel found the run passivated.
"""

RESUME_CAUSES: tuple[ResumeCause, ...] = get_args(ResumeCause)

EventSource = Literal["sys", "client"]
"""Who published a run event: a worker or supervisor (``sys``) or a client (``client``)."""


def submit_msg_id(run_id: str) -> str:
    """``Nats-Msg-Id`` of a run's own submission: the bare run id.

    A submission resent by a submitter that died between storing the run and publishing it
    is dropped as a duplicate within the duplicate window; a worker tells the run's own
    request (which may end the run when it is refused) from any other by this id.
    """
    return run_id


def resume_msg_id(run_id: str, cause: ResumeCause, epoch: int) -> str:
    """``Nats-Msg-Id`` of a resume request: ``<run_id>:<cause>:<epoch>``.

    ``epoch`` is the epoch the run was given up at (the lost owner's, or the passivated
    one's). One scheme for every publisher, and the duplicate window drops exactly this:
    a second request for the same cause and epoch. Any resume request for epoch E ends in a
    placement with an epoch above E (or finds the run ended, or a newer owner): a worker
    that cannot place it yet (the lease is still held) has it redelivered, never drops it.
    So one per epoch suffices, and that is what lets any number of supervisors and a
    draining worker (all ``resume``) publish the failover of an epoch once. Causes do not
    suppress each other: a request of one cause may be waiting out a lease TTL (published
    while the passivating owner still held the lease) when another cause can place the run
    at once (``wake``, published by that owner right after it let the lease go).
    """
    if cause not in RESUME_CAUSES:
        raise ValueError(f"unknown resume cause {cause!r}: one of {', '.join(RESUME_CAUSES)}")
    return f"{run_id}:{cause}:{epoch}"


def msg_id_run(msg_id: str) -> str:
    """The run id part of a request's ``Nats-Msg-Id`` (``<run_id>[:<cause>:<epoch>]``)."""
    return msg_id.split(":", 1)[0]


_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,128}")


def worker_token(worker_id: str) -> str:
    """``worker_id`` as one subject token: itself when it is plain, else ``~<hash>``.

    Worker ids are free text (a host name may hold dots, a user may pass anything); a
    subject token may not hold dots, spaces or wildcards. Both sides (the worker that
    answers, the supervisor that asks) derive the token from the id the same way.
    """
    if _TOKEN.fullmatch(worker_id):
        return worker_id
    return "~" + hashlib.sha256(worker_id.encode()).hexdigest()[:32]


@functools.lru_cache(maxsize=1024)  # on every event's publish: one regex per agent name
@functools.lru_cache(maxsize=1024)  # once per event published: a regex match per agent is enough
def agent_token(agent: str) -> str:
    """``agent`` as the agent token of an events subject: itself, or
    :data:`~stalwart.messages.NO_AGENT_TOKEN` when it is empty or not a usable agent name
    (which must never widen or split a subject)."""
    return agent if _TOKEN.fullmatch(agent) else NO_AGENT_TOKEN


@dataclass(frozen=True, slots=True)
class Names:
    """Every NATS name Stalwart uses, prefixed by ``namespace`` so deployments can share a server."""

    namespace: str = "stalwart"

    @property
    def _upper(self) -> str:
        return self.namespace.upper()

    @property
    def runs_stream(self) -> str:
        """Work-queue stream of run requests."""
        return f"{self._upper}_RUNS"

    @property
    def events_stream(self) -> str:
        """Limits-retention stream of run events."""
        return f"{self._upper}_EVENTS"

    @property
    def lease_bucket(self) -> str:
        """KV bucket of run leases (per-key TTL)."""
        return f"{self._upper}_LEASES"

    @property
    def workers_bucket(self) -> str:
        """KV bucket of worker heartbeats (per-key TTL)."""
        return f"{self._upper}_WORKERS"

    @property
    def agents_bucket(self) -> str:
        """KV bucket of agent names that some worker serves."""
        return f"{self._upper}_AGENTS"

    @property
    def inbox_prefix(self) -> str:
        """Prefix of the reply subjects of the namespace's processes: ``_INBOX_<ns>``.

        Per namespace, so NATS permissions can let each namespace's users read only their
        own replies (``_INBOX_<ns>.>``).
        """
        return f"_INBOX_{self.namespace}"

    def runs_subject(self, agent: str, lane: str = "") -> str:
        """Subject that run requests for ``agent`` are published to: ``<ns>.runs.<agent>``
        for the default lane, ``<ns>.runs.<agent>.<lane>`` for another lane.

        The default lane's consumer filters the exact two-token subject, so it never
        overlaps a lane's (which a work-queue stream would refuse).
        """
        base = f"{self.namespace}.runs.{agent}"
        return f"{base}.{lane}" if lane else base

    def agent_lane(self, subject: str) -> tuple[str, str]:
        """``(agent, lane)`` of a runs subject (see :meth:`runs_subject`)."""
        rest = subject.removeprefix(f"{self.namespace}.runs.")
        agent, _, lane = rest.partition(".")
        return agent, lane

    @property
    def runs_wildcard(self) -> str:
        """Subjects captured by the runs stream."""
        return f"{self.namespace}.runs.>"

    def events_subject(self, run_id: str, source: EventSource = "sys", *, agent: str) -> str:
        """Subject of one run's events from ``source``: ``<ns>.events.<agent>.<run_id>.<source>``.

        ``agent`` is the run's agent (:func:`agent_token`: a name that is not a usable
        subject token, or none, becomes :data:`~stalwart.messages.NO_AGENT_TOKEN`), so a reader can follow one
        agent's runs with one filter (:meth:`agent_events`). Workers and supervisors publish
        on ``sys``, clients their announcements on ``client``, so NATS permissions can keep
        clients off the subjects of the events only workers publish
        (docs/security.md#least-privilege-roles), and readers skip an event of another type
        on ``client`` (:func:`stalwart.messages.read_event`).
        """
        return f"{self.namespace}.events.{agent_token(agent)}.{run_id}.{source}"

    def run_events(self, run_id: str) -> str:
        """Filter subject of all of one run's events, whoever published them, whatever the
        agent token: ``<ns>.events.*.<run_id>.*``."""
        return f"{self.namespace}.events.*.{run_id}.*"

    def legacy_run_events(self, run_id: str) -> str:
        """Filter of one run's events in the layout before the agent token
        (``<ns>.events.<run_id>.*``): still read, never written (see docs/observability.md)."""
        return f"{self.namespace}.events.{run_id}.*"

    def agent_events(self, agent: str) -> str:
        """Filter subject of every run's events of ``agent``: ``<ns>.events.<agent>.*.*``."""
        return f"{self.namespace}.events.{agent_token(agent)}.*.*"

    def events_from(self, source: EventSource) -> str:
        """Subjects of every run's events from ``source`` (for permissions)."""
        return f"{self.namespace}.events.*.*.{source}"

    @property
    def events_wildcard(self) -> str:
        """Subjects of all runs' events."""
        return f"{self.namespace}.events.>"

    def signals_subject(self, run_id: str) -> str:
        """Core subject that pokes a live waiting run when a signal (or cancel) arrives."""
        return f"{self.namespace}.signals.{run_id}"

    def rejected_subject(self, agent: str) -> str:
        """Where rejections of requests that carry no usable run id go."""
        return f"{self.namespace}.rejected.{agent}"

    @property
    def rejected_wildcard(self) -> str:
        """Subjects of all rejections."""
        return f"{self.namespace}.rejected.>"

    def consumer(self, agent: str, lane: str = "") -> str:
        """Durable pull consumer shared by every worker that serves ``agent`` (in ``lane``):
        ``agent_<agent>``, ``agent_<agent>@<lane>`` for another lane."""
        return f"agent_{agent}@{lane}" if lane else f"agent_{agent}"

    @staticmethod
    def consumer_lane(name: str) -> tuple[str, str]:
        """``(agent part, lane)`` of a consumer name made by :meth:`consumer`."""
        head, _, lane = name.partition("@")  # no agent name has one
        return head, lane

    def lease_key(self, name: str, prefix: str = "run.") -> str:
        """KV key of a lease: ``run.<run_id>`` for a run, another ``prefix`` for other
        holders of the bucket (the supervisors' election)."""
        return f"{prefix}{name}"

    def lease_subject(self, name: str, prefix: str = "run.") -> str:
        """Raw stream subject of a lease key (for CAS publishes with a TTL)."""
        return self.kv_subject(self.lease_bucket, self.lease_key(name, prefix))

    def worker_subject(self, worker_id: str) -> str:
        """Raw stream subject of a worker's heartbeat key."""
        return self.kv_subject(self.workers_bucket, worker_id)

    def alive_subject(self, worker_id: str) -> str:
        """Core subject only worker ``worker_id`` answers on: ``<ns>.alive.<token>``.

        The supervisor leader asks it to tell a dead worker from a live one: while the
        worker's connection is open the request is answered; once the process is gone the
        server has no subscriber and says "no responders" at once (see
        ``supervisor/_liveness.py``). The token is :func:`worker_token`.
        """
        return f"{self.namespace}.alive.{worker_token(worker_id)}"

    def api_subject(self, operation: str) -> str:
        """Request/reply subject of one control operation: ``<ns>.api.<operation>``
        (``submit``, ``cancel``, ``signal``, ``approve``, ``status``, ``result``; see
        ``stalwart.api``)."""
        return f"{self.namespace}.api.{operation}"

    @property
    def api_wildcard(self) -> str:
        """Every control operation's subject (what workers and supervisors serve)."""
        return f"{self.namespace}.api.*"

    @property
    def alive_wildcard(self) -> str:
        """Every worker's alive subject (for permissions)."""
        return f"{self.namespace}.alive.*"

    @staticmethod
    def kv_subject(bucket: str, key: str = ">") -> str:
        """Raw stream subject of ``key`` in KV ``bucket`` (all keys by default)."""
        return f"$KV.{bucket}.{key}"

    @staticmethod
    def kv_stream(bucket: str) -> str:
        """Stream that backs KV ``bucket``."""
        return f"KV_{bucket}"

    @property
    def max_deliveries_advisories(self) -> str:
        """Advisories JetStream sends when a request of the runs stream hit max_deliver."""
        return f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{self.runs_stream}.*"

    @property
    def lease_stream(self) -> str:
        """Stream that backs the lease bucket."""
        return self.kv_stream(self.lease_bucket)

    @property
    def workers_stream(self) -> str:
        """Stream that backs the workers bucket."""
        return self.kv_stream(self.workers_bucket)
