"""The worker process: pulls run requests, places runs, hosts their actors, keeps leases alive."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import os
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec
import structlog

from stalwart._ids import DEFAULT_LANE
from stalwart._services import ServiceDeps, start_services, stop_services
from stalwart._text import safe_text
from stalwart._version import __version__
from stalwart.actors import _telemetry as obs
from stalwart.actors._actor import RunActor
from stalwart.actors._builds import WorkerBuilds
from stalwart.actors._flow import flow_gate, publish_flow
from stalwart.actors._gate import KeyUnavailable, PlacementGate
from stalwart.actors._generation import LeaseGenerations
from stalwart.actors._handed import HandedRequest
from stalwart.actors._intake import Intake
from stalwart.actors._placement import ActorDeps, Placement
from stalwart.broker import Broker, WorkerInfo
from stalwart.broker._names import submit_msg_id
from stalwart.broker._pull import PullFeed, allot
from stalwart.builds import routing_lane, split_lane
from stalwart.checkpoints import CheckpointStore, encode_value
from stalwart.checkpoints._codec import install_codec
from stalwart.checkpoints._runs import LeasePosition
from stalwart.flow._breakers import known_states, refreshed_states
from stalwart.messages import decode_request
from stalwart.policies import Breakers

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

    from stalwart._services import Service
    from stalwart.actors._app import AgentSpec, App
    from stalwart.broker import Lease
    from stalwart.checkpoints import Claim
    from stalwart.config import Settings
    from stalwart.flow._cc_store import Dispatch
    from stalwart.messages import RunRequest

log = structlog.get_logger("stalwart.worker")

_FETCH_WAIT = 1.0


def _first_delivery(msg: Msg) -> bool:
    """Whether JetStream delivers ``msg`` for the first time (its ack subject says)."""
    try:
        return int(msg.metadata.num_delivered) <= 1
    except Exception:  # no JetStream metadata: treat it as new
        return True


@dataclass(slots=True)
class _Hosted:
    actor: RunActor
    task: asyncio.Task[None]


class Worker:
    """Serves the agents of one :class:`App`.

    Every agent has one durable pull consumer shared by all workers. A fetched request is
    placed here when this worker wins the run's lease; the request is acked once the epoch
    is claimed in Redis, and from then on the supervisor, not JetStream redelivery, is
    responsible for the run if this worker dies.
    """

    def __init__(
        self,
        app: App,
        settings: Settings,
        *,
        services: Sequence[Callable[[ServiceDeps], Awaitable[Service]]] = (),
    ) -> None:
        """``services``: started on the worker's connections once it serves (the
        ``stalwart worker`` command passes the control API, ``stalwart.api``)."""
        self.app = app
        self.settings = settings.with_worker_id()
        self.worker_id = self.settings.worker_id
        self.broker: Broker | None = None
        self.store: CheckpointStore | None = None
        self.hosted: dict[str, _Hosted] = {}
        self._placing = 0
        self._placing_leases: list[Lease] = []
        """Leases taken by placements not yet hosted: renewed like hosted runs' leases."""
        self._slot_freed = asyncio.Event()
        self._stopping = asyncio.Event()
        # Set once no fetch is outstanding. A draining worker's own pending pull request
        # would otherwise swallow the resume request it publishes for its runs.
        self.fetch_closed = asyncio.Event()
        self._fetchers: list[asyncio.Task[None]] = []
        self._subs: list[PullFeed] = []
        self._returning: set[asyncio.Future[None]] = set()
        self._alive_sub: Subscription | None = None
        """The subscription that answers the supervisor's liveness probes (see :meth:`start`)."""
        self._service_factories = services
        self._services: list[Service] = []
        self.breakers = Breakers(self.settings.breaker_threshold, self.settings.breaker_cooldown)
        self._tasks: list[asyncio.Task[None]] = []
        self._deps: ActorDeps | None = None
        self._generations: LeaseGenerations | None = None
        self._intake: Intake  # once started: what happens to requests not hosted here
        self.started_at = time.time()
        self._gate: PlacementGate  # once started: concurrency limits at placement
        self.log = log.bind(worker=self.worker_id)
        self.builds = WorkerBuilds(app, self.settings)
        self._plain: list[PullFeed] = []  # the feeds of new runs (not of a build lane)

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, register the agents, and start fetching and renewing."""
        assert self.settings.nats_url and self.settings.redis_url, "resolve server URLs first"
        Broker.check_url(self.settings.nats_url)
        install_codec(self.settings)  # payload encryption, when the settings name a key
        self.store = await CheckpointStore.connect(
            self.settings.redis_url,
            self.settings.namespace,
            # Every hosted run may read at once (placement, signals); appends do not count.
            max_connections=min(max(32, self.settings.concurrency + 8), 256),
            connect_timeout=self.settings.connect_timeout,
            settings=self.settings,
        )
        self.broker = await Broker.connect(
            self.settings, name=f"stalwart-worker {self.worker_id}", owner=self.worker_id
        )
        # Before the first fetch: a placement may need it at once.
        self._intake = Intake(self.broker, self.store, self.settings, self.worker_id, self.log)
        self._gate = PlacementGate(
            getattr(self.app, "flow", ()),
            self.store,
            self.broker,
            self.settings,
            self.worker_id,
            self.log,
        )
        self._gate.place_here = self._place_handed
        # Answer liveness probes before taking any lease: the subscription is sent ahead of
        # the JetStream requests below on the one connection, so the server knows it before
        # this worker can hold a lease. It lives exactly as long as the connection: a killed
        # process's subject has no responder at once, and the supervisor re-places its runs
        # without waiting for their leases to expire (supervisor/_liveness.py).
        self._alive_sub = await self.broker.nc.subscribe(
            self.broker.names.alive_subject(self.worker_id), cb=self._answer_alive
        )
        # Before any run's event: runs queue their events without awaiting, and sample
        # acks only once the publisher listens for them.
        await self.broker.events.ready()
        agents = sorted(self.app.agents)
        await publish_flow(self._actor_deps(), self.app.name)
        await self.broker.register_agents(agents, self.app.name)
        deps = ServiceDeps(self.broker, self.store, self.settings, self.log)
        self._services = await start_services(self._service_factories, deps)
        await self.builds.start(self.store, self.settings.namespace)
        await self._sync_builds(opening=True)
        await self._open_feeds(agents)
        self._tasks.append(asyncio.create_task(self._keepalive_loop()))
        # Everything alive now (modules, the app, the frameworks an adapter imported, the
        # connections) lives as long as the worker: move it out of the collector's reach.
        # A full collection then walks the runs' objects only, not the whole start-up heap
        # (which made a collection during a resume's journal read cost tens of ms).
        gc.collect()
        gc.freeze()
        obs.watch_worker(self)
        await self._heartbeat()
        self.log.info(
            "worker.started",
            agents=agents,
            concurrency=self.settings.concurrency,
            # "asyncio" or "uvloop" (STALWART_EVENT_LOOP): the loop its CPU figures are for.
            event_loop=type(asyncio.get_running_loop()).__module__.partition(".")[0],
        )

    async def _answer_alive(self, msg: Msg) -> None:
        # Empty: the answer itself is the news. Answered from the event loop, so a loop
        # blocked by a step body answers late, which the prober leaves to the lease TTL.
        if msg.reply:
            with contextlib.suppress(Exception):
                await msg.respond(b"")

    async def run(self) -> None:
        """Start (unless :meth:`start` was awaited already), then serve until :meth:`stop`."""
        if self.broker is None:
            await self.start()
        await self._stopping.wait()
        await self._shutdown()

    def stop(self) -> None:
        """Ask the worker to drain: stop fetching, hand runs over at their next step."""
        self._stopping.set()
        self._slot_freed.set()
        # At once, in the signal handler's turn of the loop: a step that ends before the
        # shutdown task runs must find its run draining, not start the next step.
        for hosted in list(self.hosted.values()):
            hosted.actor.drain()

    @property
    def draining(self) -> bool:
        """:meth:`stop` was called: the worker takes no new runs."""
        return self._stopping.is_set()

    @property
    def capacity(self) -> int:
        """Runs this worker hosts at most (``concurrency``)."""
        return self.settings.concurrency

    @property
    def free_slots(self) -> int:
        """Runs this worker would take now: its capacity less the runs it hosts, 0 while
        draining (the heartbeat's ``free`` and the ``stalwart.worker.free`` gauge)."""
        return 0 if self.draining else max(0, self.settings.concurrency - len(self.hosted))

    async def _shutdown(self) -> None:
        assert self.broker is not None and self.store is not None
        # The budget counts from the signal, as the orchestrator's grace period does.
        budget_end = time.monotonic() + self.settings.drain_timeout
        self.log.info(
            "worker.draining", runs=sorted(self.hosted), drain_timeout=self.settings.drain_timeout
        )
        # Runs first, before any await: a step that ends while the heartbeat is on the wire
        # must find its run draining, not start the next step.
        for hosted in list(self.hosted.values()):
            hosted.actor.drain()
        with contextlib.suppress(Exception):  # operators see the drain now, not a beat later
            await self._heartbeat()
        # Fetches end within their wait time; whatever they return is nak'ed for others.
        if self._fetchers:
            await asyncio.wait(self._fetchers, timeout=_FETCH_WAIT + 5)
        await self._release_undelivered()
        self.fetch_closed.set()
        await stop_services(self._services)
        await self._drain_runs(budget_end)
        for t in [*self._tasks, *self._fetchers]:
            t.cancel()
        with contextlib.suppress(Exception):
            await self.broker.remove_heartbeat(self.worker_id)
        await self._gate.close()
        await self.broker.close()
        await self.store.close()
        self.log.info("worker.stopped")

    async def _drain_runs(self, budget_end: float) -> None:
        """Let hosted runs reach a step boundary until ``budget_end``, then hand the rest over.

        A run between steps, in a retry backoff or in a durable wait is handed over at once
        (its actor raises ``Drained``). A run inside a step body gets what is left of the
        budget; then its body is cancelled, its lease released and its resume request
        published at once, so another worker starts the step again within moments instead
        of after the lease TTL and a supervisor pass.
        """
        seen: dict[str, RunActor] = {}
        while True:
            seen.update((h.actor.run_id, h.actor) for h in self.hosted.values())
            remaining = budget_end - time.monotonic()
            if (not self.hosted and not self._placing) or remaining <= 0:
                break
            # Wake when a run ends or a placement in flight finishes (it may host a run).
            self._slot_freed.clear()
            freed = asyncio.ensure_future(self._slot_freed.wait())
            try:
                await asyncio.wait(
                    [freed, *(h.task for h in self.hosted.values())],
                    timeout=remaining,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                freed.cancel()
        still = [h for h in self.hosted.values() if not h.task.done()]
        for hosted in still:
            hosted.actor.hand_over()
            hosted.task.cancel()
        if still:
            await asyncio.wait([h.task for h in still], timeout=5)
        outcomes: dict[str, list[str]] = {}
        for run_id, actor in sorted(seen.items()):
            outcomes.setdefault(actor.handover or "ended", []).append(run_id)
        self.log.info(
            "worker.drained",
            released=outcomes.get("released", []),
            cancelled=outcomes.get("cancelled", []),
            ended=outcomes.get("ended", []),
            over_budget=round(max(time.monotonic() - budget_end, 0.0), 3),
        )

    async def _release_undelivered(self) -> None:
        """Close the pull feeds, so no request reaches this worker any more.

        Closing unsubscribes each feed's inbox, and the server drops pull requests nobody
        listens for, so requests published from now on (this worker's own hand-over resume
        requests among them) go to other workers. A request that was already on its way is
        given back by :meth:`_deliver` (the worker is stopping).
        """
        for feed in self._subs:
            await feed.close()

    # -- fetching and placement -------------------------------------------------------------

    def _free(self) -> int:
        return self.settings.concurrency - len(self.hosted) - self._placing

    async def _open_feeds(self, agents: list[str]) -> None:
        """One pull feed per agent and lane, and the loop that keeps them asking for free
        slots (shared by all: a lane is a way in, not a reservation)."""
        if self.builds.takes_new:
            await self._open_lanes(agents, self.settings.lane_list, plain=True)
        for build in sorted(self.builds.resumes):
            await self._open_lanes(agents, self._build_lanes(build))
        self._fetchers.append(asyncio.create_task(self._fetch_loop()))

    def _build_lanes(self, build: str) -> list[str]:
        return [routing_lane(lane, build) for lane in self.settings.lane_list]

    async def _open_lanes(self, agents: list[str], lanes: list[str], plain: bool = False) -> None:
        assert self.broker is not None
        for name in agents:
            spec = self.app.get(name)
            for lane in lanes:
                feed = await self.broker.pull_feed(
                    name,
                    deliver=functools.partial(self._deliver, spec),
                    changed=self._slot_freed.set,
                    lane=lane,
                )
                self._subs.append(feed)
                if plain:
                    self._plain.append(feed)

    async def _sync_builds(self, opening: bool = False) -> None:
        """Follow the builds registry: pull newly resumable build lanes; stop pulling new
        runs once a newer build is alive or this one is drained (closing a feed drops its
        open pull requests at the server), start again when it is the newest again."""
        assert self.broker is not None
        agents = sorted(self.app.agents)
        # A build is alive while its workers say so (each heartbeat); a dead one's last
        # word counts for three lease TTLs.
        serving = not self._stopping.is_set()
        added = await self.builds.refresh(serving, 3 * self.settings.lease_ttl)
        if opening or not serving:
            return  # _open_feeds opens them all
        for build in sorted(added):
            await self._open_lanes(agents, self._build_lanes(build))
        if not self.builds.takes_new and self._plain:
            closing, self._plain = self._plain, []
            self._subs[:] = [f for f in self._subs if not any(f is c for c in closing)]
            for feed in closing:
                await feed.close()
            self.log.info("build.new_runs_stopped", build=self.builds.build)
        elif self.builds.takes_new and not self._plain:
            await self._open_lanes(agents, self.settings.lane_list, plain=True)
            self.log.info("build.new_runs_resumed", build=self.builds.build)
        self._slot_freed.set()

    async def _fetch_loop(self) -> None:
        """Keep pull requests open for the free slots (see :func:`allot`), until stopped.

        Woken when a slot frees or a feed's request ended; once a second anyway, so feeds
        notice requests lost with the server (:meth:`PullFeed.check`).
        """
        threshold = max(1, self.settings.concurrency // 4)
        while not self._stopping.is_set():
            feeds = list(self._subs)  # the builds sync adds and removes feeds
            # Cleared before looking: a slot freed while the pulls below are sent wakes the
            # wait at once instead of a second later.
            self._slot_freed.clear()
            for feed in feeds:
                feed.check()
            asks = allot(
                self._free(), [f.outstanding for f in feeds], threshold, [f.busy for f in feeds]
            )
            try:
                for feed, ask in zip(feeds, asks, strict=True):
                    await feed.pull(ask)
            except Exception as exc:  # disconnected: nats-py reconnects by itself
                self.log.warning("fetch.failed", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._slot_freed.wait()

    def _deliver(self, spec: AgentSpec, msg: Msg) -> None:
        """Place a delivered request, or give it back at once if no slot is free for it.

        A slot is normally free (feeds ask only for free slots); not when a feed kept one
        credit for reachability (see :func:`allot`) or the worker is stopping. Given back
        (nak), the request goes straight to another worker's open pull request. Only on its
        first delivery, though: every nak costs one of its ``max_deliver`` deliveries, and
        under a long backlog a request could be handed from full worker to full worker until
        dead-lettered. A request given back once is placed here even without a free slot,
        so a worker hosts at most one run per feed (agent and lane) beyond ``concurrency``.
        """
        if self._stopping.is_set() or (self._free() <= 0 and _first_delivery(msg)):
            back = asyncio.ensure_future(self._give_back(spec, msg))
            self._returning.add(back)  # held until done: the loop keeps only weak references
            back.add_done_callback(self._returning.discard)
            return
        self._placing += 1
        task = asyncio.create_task(self._place(spec, msg))
        task.add_done_callback(self._placed)

    def _place_handed(
        self, d: Dispatch, msg_id: str, to_nats: Callable[[], Awaitable[None]]
    ) -> bool:
        """Place a run just handed a concurrency slot here, from its parked request, when
        this worker serves its agent and lane and has a free slot (see ``_handed.py``)."""
        assert self.broker is not None
        try:
            spec = self.app.get(decode_request(d.request).agent)
        except Exception:
            return False  # another app's agent, or unreadable: NATS takes it to its worker
        if self._stopping.is_set() or self._free() <= 0 or d.lane not in self.settings.lane_list:
            return False
        if not self.builds.takes_new:
            return False  # a new run: NATS takes it to a worker of the newest build
        handed = HandedRequest(
            self.broker.names.runs_subject(spec.name, d.lane), d.request, msg_id, to_nats
        )
        self._placing += 1
        task = asyncio.create_task(self._place(spec, handed))  # type: ignore[arg-type]
        task.add_done_callback(self._placed)
        return True

    async def _give_back(self, spec: AgentSpec, msg: Msg) -> None:
        try:
            await msg.nak()
        except Exception as exc:  # redelivered after ack_wait anyway
            self.log.warning("request.give_back_failed", agent=spec.name, error=repr(exc))
        self.log.debug("request.given_back", agent=spec.name, stopping=self._stopping.is_set())

    def _placed(self, task: asyncio.Task[None]) -> None:
        self._placing -= 1
        self._slot_freed.set()
        if not task.cancelled() and task.exception() is not None:
            self.log.error("place.crashed", error=safe_text(task.exception()))

    async def _place(self, spec: AgentSpec, msg: Msg) -> None:
        assert self.broker is not None and self.store is not None
        req = self._intake.decode(spec, msg)
        if isinstance(req, str):
            await self._intake.refuse(spec, msg, req)
            return
        try:
            lease = await self.broker.leases.acquire(req.run_id)
        except Exception:
            await self._intake.retry_later(msg)
            raise
        if lease is None:
            await self._intake.lease_busy(req, msg)
            return
        # From here the keep-alive loop renews the lease too: the build read and the claim
        # can outlast the TTL (they ride out a Redis restart for up to 30 s), and a lease that
        # ran out meanwhile would hand the run to a second worker while this one starts it.
        self._placing_leases.append(lease)
        try:
            try:
                run_build = await self.builds.run_build(self.store, req.run_id)
                if not self.builds.may_resume(run_build):
                    await self.builds.reroute(self.broker, spec.name, msg, run_build)
                    await self.broker.leases.release(lease)
                    self.log.info("build.rerouted", run_id=req.run_id, build=run_build)
                    return
            except Exception:
                with contextlib.suppress(Exception):
                    await self.broker.leases.release(lease)
                await self._intake.retry_later(msg)
                raise
            if await self._admit(req, msg, lease):
                await self._claim_and_host(spec, req, msg, lease, run_build)
        finally:
            self._placing_leases = [x for x in self._placing_leases if x is not lease]
            hosted = self.hosted.get(req.run_id)
            if hosted is None or hosted.actor.lease is not lease:
                self._gate.left(req.run_id, lease)  # not hosted: its slots go to others

    async def _admit(self, req: RunRequest, msg: Msg, lease: Lease) -> bool:
        """Concurrency limits: False when the run was parked to wait for a slot."""
        assert self.broker is not None
        try:
            lane = self.broker.names.agent_lane(msg.subject)[1]
            if await self._gate.admit(req, msg, lease, lane):
                return True
        except KeyUnavailable as exc:
            await self.broker.leases.release(lease)
            own = (msg.headers or {}).get("Nats-Msg-Id") == submit_msg_id(req.run_id)
            await self._intake.reject(self.app.get(req.agent), msg, req.run_id, str(exc), own=own)
            return False
        except Exception:
            with contextlib.suppress(Exception):
                await self.broker.leases.release(lease)
            await self._intake.retry_later(msg)
            raise
        await self.broker.leases.release(lease)
        return False

    async def _claim_and_host(
        self, spec: AgentSpec, req: RunRequest, msg: Msg, lease: Lease, known: str
    ) -> None:
        assert self.broker is not None and self.store is not None
        try:
            generations = self._lease_generations()
            generation = await generations.current()
            claim = await self._claim(spec, req, lease, generation)
            if claim.outcome == "stale":
                # Refused: a late claim (another lease of this bucket claimed since), or this
                # bucket is not the one the record knows (a new NATS, a restored bucket).
                newer = await generations.after_stale(generation, claim)
                if newer is not None:
                    claim = await self._claim(spec, req, lease, newer)
        except Exception:
            # The claim may or may not have landed: a later placement with a newer lease
            # claims over it either way. Hand back the lease and the request now, so the
            # run does not wait out the lease TTL and ack_wait.
            with contextlib.suppress(Exception):
                await self.broker.leases.release(lease)
            await self._intake.retry_later(msg)
            raise
        if claim.outcome != "ok":
            await self.broker.leases.release(lease)
            await self._intake.not_placed(spec, msg, req, claim)
            return
        if lease.lost:
            # The lease ran out or was taken while the claim was under way: this placement
            # must not start the run. Redeliver the request now; whoever places it next
            # claims over this epoch (or finds the new owner's lease and drops it).
            self.log.warning("place.lease_lost", run_id=req.run_id, epoch=claim.epoch)
            await msg.nak()
            return
        run_build = await self.builds.stamp(self.store, req.run_id, known)
        await msg.ack()
        lane = split_lane(self.broker.names.agent_lane(msg.subject)[1])[0]
        placement = Placement(
            spec=spec,
            run_id=req.run_id,
            lease=lease,
            epoch=claim.epoch,
            claim_seq=claim.seq,
            input=claim.input,
            cancel=claim.cancel,
            deadline=claim.deadline,
            claimed_at=claim.at,
            trace_parent=obs.trace_parent(claim.trace, msg.headers),
            lane=routing_lane(lane, run_build),  # its resumes go to its build's workers
            conversation=req.conversation,
            on_busy=req.on_busy,
            submitted_at=req.submitted_at,
        )
        actor = RunActor(placement, self._actor_deps())
        self._host(actor)

    async def _claim(
        self, spec: AgentSpec, req: RunRequest, lease: Lease, generation: int
    ) -> Claim:
        assert self.store is not None
        return await self.store.claim(
            req.run_id,
            agent=spec.name,
            input=encode_value(req.input),
            # The position of the lease (its revision at acquisition) in this bucket instance:
            # a bare revision only compares with revisions of the same instance.
            epoch=LeasePosition(generation, lease.acquired).epoch,
            worker=self.worker_id,
            trace=msgspec.json.encode(req.trace).decode() if req.trace else "",
            run_timeout=spec.policies.run_timeout or 0.0,
            kind=req.kind,
            max_placements=self.settings.max_placements,
        )

    def _lease_generations(self) -> LeaseGenerations:
        assert self.broker is not None and self.store is not None
        if self._generations is None:
            self._generations = LeaseGenerations(self.broker, self.store, self.log)
        return self._generations

    def _actor_deps(self) -> ActorDeps:
        assert self.broker is not None and self.store is not None
        if self._deps is None:
            self._deps = ActorDeps(
                store=self.store,
                broker=self.broker,
                worker_id=self.worker_id,
                breakers=self.breakers,
                fetch_closed=self.fetch_closed,
                passivate_after=self.settings.passivate_after,
                conversation_recheck=self.settings.conversation_recheck,
                confirm_retry=self.settings.lease_confirm_retry,
                flow=flow_gate(self.app, self.store, self.settings.passivate_after),
            )
        return self._deps

    def _host(self, actor: RunActor) -> None:
        if self._stopping.is_set():
            actor.drain()  # placed while draining: hand it over at its first step boundary
        task = asyncio.create_task(actor.run(), name=f"run:{actor.run_id}")
        self.hosted[actor.run_id] = _Hosted(actor, task)

        def done(_: asyncio.Task[None]) -> None:
            hosted = self.hosted.get(actor.run_id)
            if hosted is not None and hosted.actor is actor:
                del self.hosted[actor.run_id]
            self._gate.left(actor.run_id, actor.lease)
            self._slot_freed.set()

        task.add_done_callback(done)

    def concurrency_usage(self) -> tuple[tuple[str, str, int, int], ...]:
        """Concurrency limits' busiest keys (rule, key, running, waiting), for the gauges."""
        gate = getattr(self, "_gate", None)  # not before start
        return gate.usage if gate is not None else ()

    # -- leases and heartbeats ---------------------------------------------------------------

    async def _keepalive_loop(self) -> None:
        interval = self.settings.lease_ttl / 3
        # Lease renewals in a loop of their own: they need only NATS, and the rest below
        # reads and writes Redis (shared breakers, builds, concurrency slots). A Redis that
        # stops answering must not stop the renewals, or every run loses its lease with it.
        renewals = asyncio.create_task(self._renew_loop(interval))
        try:
            await self._upkeep_loop(interval)
        finally:
            renewals.cancel()

    async def _renew_loop(self, interval: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self._renew()
            except Exception as exc:
                self.log.warning("keepalive.failed", error=repr(exc))
            # Every ``interval`` from one pass's start to the next: a pass that took long
            # (thousands of leases on a busy loop) must not push the next one later.
            await asyncio.sleep(max(interval - (loop.time() - started), 0.0))

    async def _upkeep_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self._heartbeat()
                try:  # on its own: a failed read must not skip the keep-alive below
                    await self._sync_builds()
                except Exception as exc:
                    self.log.warning("builds.sync_failed", error=repr(exc))
                placing = {lease.run_id for lease in self._placing_leases}
                await self._gate.keep_alive(set(self.hosted) | placing)
            except Exception as exc:
                self.log.warning("keepalive.failed", error=repr(exc))

    async def _renew(self) -> None:
        assert self.broker is not None
        leases: list[Lease] = [h.actor.lease for h in self.hosted.values() if h.actor.holds_lease]
        # The same lease twice in one batch would be refused once and look lost.
        leases += [p for p in self._placing_leases if not any(p is x for x in leases)]
        for lease in await obs.timed_renewal(self.broker.leases.renew(leases), len(leases)):
            if any(lease is p for p in self._placing_leases):
                # Its placement sees ``lease.lost`` once the claim returns, and stops there.
                self.log.warning(
                    "lease.lost", run_id=lease.run_id, revision=lease.revision, placing=True
                )
                continue
            hosted = self.hosted.get(lease.run_id)
            if hosted is None or hosted.actor.lease is not lease or not hosted.actor.holds_lease:
                continue  # finished or handed over while the renewal was in flight
            self.log.warning("lease.lost", run_id=lease.run_id, epoch=hosted.actor.epoch)
            hosted.actor.stop_lost()
            hosted.task.cancel()

    def breaker_states(self) -> dict[str, str]:
        """Breakers not closed: this worker's own and the shared ones as last seen."""
        gate = self._deps.flow if self._deps is not None else None
        shared = known_states(gate.handles) if gate is not None else {}
        return {**self.breakers.states(), **shared}

    async def _shared_breakers(self) -> dict[str, str]:
        """The shared breakers (flow rules) this worker saw not closed, re-read from Redis;
        as last seen when Redis does not answer within a third of the TTL (the heartbeat,
        which needs only NATS, must not wait out a Redis outage)."""
        gate = self._deps.flow if self._deps is not None else None
        if gate is None:
            return {}
        try:
            return await asyncio.wait_for(
                refreshed_states(gate.handles), self.settings.lease_ttl / 3
            )
        except Exception:
            return known_states(gate.handles)

    async def _heartbeat(self) -> None:
        assert self.broker is not None
        info = WorkerInfo(
            worker_id=self.worker_id,
            agents=sorted(self.app.agents),
            capacity=self.capacity,
            active=len(self.hosted),
            pid=os.getpid(),
            host=socket.gethostname(),
            version=__version__,
            at=time.time(),
            breakers={**self.breakers.states(), **await self._shared_breakers()},
            lanes=[lane or DEFAULT_LANE for lane in self.settings.lane_list],
            started_at=self.started_at,
            draining=self.draining,
            free=self.free_slots,
            build=self.builds.build,
            new_runs=self.builds.takes_new,
        )
        await self.broker.heartbeat(info, ttl=self.settings.lease_ttl)
