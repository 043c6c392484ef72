"""The NATS side of Stalwart in one object: connection, topology, leases, requests, events."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from typing import TYPE_CHECKING, Any

import msgspec
import structlog
from nats.js.errors import APIError, KeyNotFoundError, NotFoundError

from stalwart._transport import NatsSecurity
from stalwart.broker._connect import check_nats_url, connect
from stalwart.broker._events import EventPublisher, last_event, subscribe_events
from stalwart.broker._lease import LeaseManager
from stalwart.broker._names import Names, ResumeCause, resume_msg_id, submit_msg_id
from stalwart.broker._pull import PullFeed
from stalwart.broker._setup import ensure_agent_consumer, ensure_topology, retry_transient
from stalwart.errors import PayloadTooLargeError, QueueFullError
from stalwart.messages import (
    EV_ACCEPTED,
    EV_CANCELLED,
    EV_REJECTED,
    EV_SIGNAL,
    ErrorData,
    RequestRejectedData,
    RunAcceptedData,
    RunEndedData,
    RunEvent,
    RunRequest,
    SignalReceivedData,
    data_dict,
    encode_request,
)
from stalwart.telemetry import inject_headers

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from nats.aio.client import Client as NATS
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription
    from nats.js import JetStreamContext
    from nats.js.kv import KeyValue

    from stalwart.config import Settings


class WorkerInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A worker's heartbeat: who it is and how loaded it is."""

    worker_id: str
    agents: list[str]
    capacity: int
    active: int
    pid: int
    host: str
    version: str
    at: float
    breakers: dict[str, str] = {}
    """Circuit breakers that are not closed, by ``kind:name``: ``open`` or ``half_open``."""
    # Added later, with defaults: a reader of either version decodes the other's heartbeat.
    lanes: list[str] = []
    """Lanes the worker serves (``default`` is the default lane); [] from an older worker."""
    started_at: float = 0.0
    """When the worker started (epoch seconds); 0 from an older worker."""
    draining: bool = False
    """The worker is shutting down: it takes no new runs and hands its runs over."""
    free: int | None = None
    """Runs the worker would take now: ``capacity - active``, 0 while draining; None from
    an older worker (read :attr:`free_slots` instead)."""
    build: str = ""
    """The worker's build id (docs/deploys.md); "" from an older worker."""
    new_runs: bool = True
    """The worker pulls new runs (its build is the newest active one alive)."""

    @property
    def free_slots(self) -> int:
        """:attr:`free`, or ``capacity - active`` for a heartbeat that does not carry it."""
        if self.free is not None:
            return self.free
        return 0 if self.draining else max(0, self.capacity - self.active)


_json = msgspec.json.Encoder()
log = structlog.get_logger("stalwart.broker")

_STREAM_FULL = 10077  # JetStream: store failed, "maximum messages/bytes exceeded"
_MSG_TOO_BIG = 10054  # JetStream: "message size exceeds maximum allowed"


def _refusal(req: RunRequest, exc: APIError) -> Exception:
    """The error a submitter sees when the runs stream refuses ``req`` (else ``exc``)."""
    text = exc.description or ""
    if exc.err_code == _STREAM_FULL and "maximum" in text:
        return QueueFullError(
            f"run {req.run_id!r}: the runs stream is full ({text}; see runs_max_msgs and "
            "runs_max_bytes); nothing was queued, submit again later"
        )
    if exc.err_code == _MSG_TOO_BIG:
        return PayloadTooLargeError(f"run {req.run_id!r}: the runs stream refused it: {text}")
    return exc


class Broker:
    """Owns one NATS connection and everything Stalwart does over it."""

    def __init__(self, nc: NATS, settings: Settings, owner: str = "") -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.settings = settings
        self.names = Names(settings.namespace)
        self.owner = owner
        self.leases = LeaseManager(self.js, self.names, settings.lease_ttl, owner, nc=nc)
        self.leases.margin = settings.effective_lease_margin
        self.events = EventPublisher(nc, self.js, self.names, text_limit=settings.event_text_limit)
        self._agents_kv: KeyValue | None = None

    @staticmethod
    def check_url(url: str) -> None:
        """Raise :class:`ConfigurationError` if ``url`` is not a NATS URL (or list of them).

        Processes call this before connecting to anything, so a misspelt NATS URL is
        reported at once rather than after waiting for the other server.
        """
        check_nats_url(url)

    @classmethod
    async def connect(
        cls, settings: Settings, *, name: str = "stalwart", owner: str = ""
    ) -> Broker:
        """Connect to ``settings.nats_url`` and make sure the topology exists (it is looked up;
        what is missing is created only with ``settings.provision == "auto"``)."""
        assert settings.nats_url, "nats_url must be resolved before connecting"
        nc = await connect(
            settings.nats_url,
            name=name,
            connect_timeout=settings.connect_timeout,
            security=NatsSecurity.from_settings(settings),
            inbox_prefix=Names(settings.namespace).inbox_prefix,
        )
        broker = cls(nc, settings, owner)
        try:
            await ensure_topology(broker.js, broker.names, settings)
        except BaseException:
            await nc.close()
            raise
        return broker

    async def close(self) -> None:
        """Flush pending events and close the connection."""
        if not self.nc.is_closed:
            # close(), not drain(): drain waits on in-flight pull requests for up to its
            # own timeout, which would hold a shutting-down worker for no benefit.
            with contextlib.suppress(Exception):
                await self.events.flush()
                await self.nc.flush(timeout=2)
            try:
                async with asyncio.timeout(5):
                    await self.nc.close()
            except (OSError, TimeoutError):
                # The server is gone (a NATS outage during shutdown): nats-py's close()
                # flushes into the dead socket and raises; there is nothing left to close.
                log.info("nats.close_failed", reason="connection lost")

    # -- run requests -------------------------------------------------------------------

    def encode_request(self, req: RunRequest) -> bytes:
        """Encode ``req``; :class:`PayloadTooLargeError` if the server would refuse it."""
        data = encode_request(req)
        limit = self.nc.max_payload
        if len(data) > limit:
            raise PayloadTooLargeError(
                f"run {req.run_id!r}: the encoded request is {len(data)} bytes, over the NATS "
                f"server's max_payload of {limit} bytes; pass large inputs by reference "
                "(an object store key or URL) instead"
            )
        if 0 <= self.settings.request_max_bytes < len(data):
            raise PayloadTooLargeError(
                f"run {req.run_id!r}: the encoded request is {len(data)} bytes, over "
                f"request_max_bytes ({self.settings.request_max_bytes}); pass large inputs by "
                "reference (an object store key or URL) instead"
            )
        return data

    async def publish_request(self, req: RunRequest, msg_id: str, lane: str = "") -> bool:
        """Publish a run request (to ``lane``'s subject; "" is the default lane); False when
        JetStream dropped it as a duplicate of ``msg_id``.

        The raw form: Stalwart itself publishes through :meth:`submit` and
        :meth:`request_resume`, whose message ids are the protocol's (see ``_names``).
        """
        data = self.encode_request(req)
        # Events queued before this request (a released run's last ones) go first.
        await self.events.send_queued()
        try:
            ack = await self.js.publish(
                self.names.runs_subject(req.agent, lane),
                data,
                # The current trace context (the submit or resume span) travels with the request.
                headers=inject_headers({"Nats-Msg-Id": msg_id}),
            )
        except APIError as exc:
            raise _refusal(req, exc) from exc
        return not ack.duplicate

    async def submit(self, req: RunRequest, lane: str = "") -> bool:
        """Publish a new run's own request (message id :func:`submit_msg_id`) in ``lane``.

        False when JetStream dropped it as a resend of a submission still in the window.
        """
        return await self.publish_request(req, msg_id=submit_msg_id(req.run_id), lane=lane)

    async def request_resume(
        self, run_id: str, agent: str, epoch: int, cause: ResumeCause, lane: str = ""
    ) -> bool:
        """Ask for ``run_id`` (of ``agent``, in ``lane``), given up at ``epoch``, to be placed
        again.

        The only way Stalwart publishes a resume request: its message id is
        :func:`resume_msg_id`, so JetStream drops a second one for the same cause and epoch.
        False when it was dropped so. ``lane`` is the run's (its record's): a run stays in
        the lane it was submitted to.
        """
        return await self.publish_request(
            RunRequest(run_id=run_id, agent=agent, kind="resume", epoch=epoch),
            msg_id=resume_msg_id(run_id, cause, epoch),
            lane=lane,
        )

    async def drop_request(self, seq: int) -> None:
        """Delete the request at stream sequence ``seq`` from the runs stream (a dead letter)."""
        await self.js.delete_msg(self.names.runs_stream, seq)

    async def poke(self, run_id: str) -> None:
        """Tell a live run waiting for a signal (or a cancel) to look at its inbox now.

        Core NATS, at most once: the signal or cancel is stored before, and a waiter that
        misses the poke finds it at its next recheck.
        """
        await self.nc.publish(self.names.signals_subject(run_id), b"")

    # -- what a client announces ----------------------------------------------------------

    async def _announce(self, run_id: str, agent: str, type: str, data: dict[str, Any]) -> None:
        # Acked: a client's event must be in the stream before anything it announces.
        # On the run's client subject: clients may not publish where workers do.
        await self.events.publish(
            RunEvent(type=type, run_id=run_id, at=time.time(), data=data, agent=agent),
            acked=True,
            source="client",
        )

    async def announce_accepted(
        self, run_id: str, agent: str, *, forked_from: str = "", at: str = ""
    ) -> None:
        """``run.accepted``: a new run (a fork: of run ``forked_from`` at step ``at``) was
        stored."""
        data = RunAcceptedData(
            agent=agent, forked_from=forked_from or msgspec.UNSET, at=at or msgspec.UNSET
        )
        await self._announce(run_id, agent, EV_ACCEPTED, data_dict(data))

    async def announce_rejected(self, run_id: str, agent: str, reason: str) -> None:
        """``request.rejected``: a submission of ``run_id`` was refused."""
        await self._announce(
            run_id, agent, EV_REJECTED, data_dict(RequestRejectedData(reason=reason, agent=agent))
        )

    async def signal_stored(
        self,
        run_id: str,
        name: str,
        sid: str,
        wake: tuple[str, int, str] | None = None,
        *,
        agent: str,
    ) -> None:
        """After a signal was stored: poke a live waiter, resume the run if ``wake`` (its
        ``(agent, passivated epoch, lane)``), and announce ``signal.received`` on the
        subject of ``agent`` (the run's, from its record)."""
        # Poked first, before anything that could fail on the way (the event).
        await self.poke(run_id)
        if wake is not None:
            await self.request_resume(run_id, wake[0], wake[1], "signal", lane=wake[2])
        data = data_dict(SignalReceivedData(name=name, sid=sid))
        await self._announce(run_id, agent, EV_SIGNAL, data)

    async def cancel_stored(
        self,
        run_id: str,
        reason: str,
        *,
        ended: bool,
        agent: str,
        wake: tuple[str, int, str] | None = None,
    ) -> None:
        """After a cancel was stored: poke a live waiter so it notices now, resume a
        passivated run (``wake``: its agent, epoch and lane) so it can end, and announce
        ``run.cancelled`` (on ``agent``'s subject) when the cancel ``ended`` a run nobody
        had placed."""
        await self.poke(run_id)
        if wake is not None:
            await self.request_resume(run_id, wake[0], wake[1], "cancel", lane=wake[2])
        if ended:
            error = ErrorData(type="RunCancelled", message=reason)
            data = data_dict(RunEndedData(error=error))
            await self._announce(run_id, agent, EV_CANCELLED, data)

    async def pull_feed(
        self,
        agent: str,
        *,
        deliver: Callable[[Msg], None],
        changed: Callable[[], None],
        lane: str = "",
    ) -> PullFeed:
        """A started :class:`PullFeed` on the shared durable consumer of ``agent`` in ``lane``
        (looked up; created if missing and ``settings.provision`` allows). It pulls nothing
        until asked."""
        await ensure_agent_consumer(self.js, self.names, self.settings, agent, lane)
        if lane:
            kv = await self._agents()
            await kv.put(f"{agent}.{lane}", _json.encode({"lane": lane, "at": time.time()}))
        feed = PullFeed(
            self.nc,
            self.names.runs_stream,
            self.names.consumer(agent, lane),
            expires=self.settings.effective_pull_expires,
            deliver=deliver,
            changed=changed,
            label=f"{agent}@{lane}" if lane else agent,
        )
        await feed.start()
        return feed

    # -- registry and heartbeats ----------------------------------------------------------

    async def _agents(self) -> KeyValue:
        if self._agents_kv is None:
            self._agents_kv = await self.js.key_value(self.names.agents_bucket)
        return self._agents_kv

    async def register_agents(self, agents: list[str], app: str) -> None:
        """Record that ``agents`` are served, so clients can refuse unknown agent names.

        Retried for up to ``connect_timeout`` while JetStream is unavailable: a replicated
        bucket just created, or losing its leader, answers "no responders" for a moment.
        """
        kv = await retry_transient(
            "open the agents bucket", self._agents, self.settings.connect_timeout
        )
        for agent in agents:
            value = _json.encode({"app": app, "registered_at": time.time()})
            await retry_transient(
                f"register agent {agent!r}",
                functools.partial(kv.put, agent, value),
                self.settings.connect_timeout,
            )

    async def agent_known(self, agent: str) -> bool:
        """Whether some worker has ever registered ``agent``."""
        kv = await self._agents()
        try:
            entry = await kv.get(agent)
        except (KeyNotFoundError, NotFoundError):
            return False
        return entry.value is not None

    async def lane_known(self, agent: str, lane: str) -> bool:
        """Whether some worker has ever served ``agent`` in ``lane`` (registered by
        :meth:`pull_feed` as key ``<agent>.<lane>`` of the agents bucket, which clients may
        read; agent names have no dots, so it is no agent's key)."""
        return await self.agent_known(f"{agent}.{lane}")

    async def known_agents(self) -> list[str]:
        """Every registered agent name."""
        # One stream-info request listing the bucket's subjects: deterministic, where
        # KeyValue.keys() builds a watcher that can come back empty on a busy server.
        bucket = self.names.agents_bucket
        try:
            info = await self.js.stream_info(
                Names.kv_stream(bucket), subjects_filter=Names.kv_subject(bucket)
            )
        except NotFoundError:
            return []
        prefix = Names.kv_subject(bucket, "")
        keys = (s.removeprefix(prefix) for s in (info.state.subjects or {}))
        return sorted(k for k in keys if "." not in k)  # <agent>.<lane> keys are lanes

    async def heartbeat(self, info: WorkerInfo, ttl: int) -> None:
        """Publish the worker's heartbeat; the key vanishes ``ttl`` seconds after the last one."""
        await self.js.publish(
            self.names.worker_subject(info.worker_id), _json.encode(info), msg_ttl=ttl
        )

    async def remove_heartbeat(self, worker_id: str) -> None:
        """Delete a worker's heartbeat key at once (graceful shutdown)."""
        await self.js.publish(
            self.names.worker_subject(worker_id),
            b"",
            headers={"KV-Operation": "PURGE", "Nats-Rollup": "sub"},
            msg_ttl=1,
        )

    async def workers(self) -> list[WorkerInfo]:
        """Heartbeats of the workers alive now."""
        kv = await self.js.key_value(self.names.workers_bucket)
        out: list[WorkerInfo] = []
        try:
            keys = await kv.keys()
        except Exception:  # NoKeysError when the bucket is empty
            return out
        for key in keys:
            try:
                entry = await kv.get(key)
            except (KeyNotFoundError, NotFoundError):
                continue
            if not entry.value:
                continue
            try:
                out.append(msgspec.json.decode(entry.value, type=WorkerInfo))
            except Exception:  # not a heartbeat (anyone can publish there): not a worker
                continue
        return out

    # -- events -------------------------------------------------------------------------

    async def last_event(self, run_id: str) -> RunEvent | None:
        """The run's newest stored event, or None (see :func:`last_event`)."""
        return await last_event(self.js, self.names, run_id)

    async def watch_events(self, run_id: str, cb: Callable[[Msg], Awaitable[None]]) -> Subscription:
        """A plain (core) subscription to a run's live events: no replay, no consumer."""
        return await self.nc.subscribe(self.names.run_events(run_id), cb=cb)

    def subscribe(
        self,
        run_id: str,
        *,
        follow: bool = True,
        ends: Callable[[RunEvent], Awaitable[bool]] | None = None,
    ) -> AsyncIterator[RunEvent]:
        """A run's events from the first one (see :func:`subscribe_events`)."""
        return subscribe_events(self.js, self.names, run_id, follow=follow, ends=ends)
