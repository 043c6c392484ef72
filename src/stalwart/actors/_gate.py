"""The placement gate: concurrency limits applied when a worker places a run.

Called by the worker once it holds the run's lease and before the claim, so only one
placement of a run is ever at the gate (a slot held under the lease's revision is the
run's, whoever placed it before). A run whose key is full is parked in Redis, its request
acknowledged and its lease released: it holds no worker slot while it waits. Slots are
given back when the hosted actor ends (finished, passivated, handed over, lease lost), and
renewed with the leases, so the slots of a worker that died expire with its leases.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

from stalwart._text import clip, safe_text
from stalwart.flow._cc_store import ConcurrencySlots, Dispatch
from stalwart.flow._concurrency import MAX_PRIORITY, ConcurrencyLimit, concurrency_rules
from stalwart.messages import (
    EV_CONCURRENCY_WAITING,
    ConcurrencyWaitingData,
    RunEvent,
    data_dict,
    decode_request,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import structlog
    from nats.aio.msg import Msg

    from stalwart.broker import Broker, Lease
    from stalwart.checkpoints import CheckpointStore
    from stalwart.config import Settings
    from stalwart.messages import RunRequest


NO_KEY = "(no key)"
"""The key of resumed runs whose key can no longer be computed: they share its slots."""


class KeyUnavailable(Exception):
    """A starting run's concurrency key cannot be computed from its input: refuse it."""


def slot_ttl(lease_ttl: float) -> float:
    """How long a slot stays held after its worker last renewed it."""
    return 2.0 * lease_ttl


def reserve_ttl(lease_ttl: float) -> float:
    """How long a slot handed to a waiting run stays reserved for its republished request
    before the request is taken for lost and published again."""
    return max(10.0, 3 * lease_ttl)


class PlacementGate:
    """Concurrency limits of one worker's app, at placement."""

    def __init__(
        self,
        rules: Any,
        store: CheckpointStore,
        broker: Broker,
        settings: Settings,
        worker_id: str,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self.rules: tuple[ConcurrencyLimit, ...] = tuple(
            r for r in rules if isinstance(r, ConcurrencyLimit)
        )
        self._store = store
        self._broker = broker
        # Two lease TTLs: a dead worker's runs are re-placed within one (lease expiry, or the
        # supervisor's liveness probe sooner) and take their own slots back, ahead of the
        # runs waiting for the key; a run nobody re-places frees its slot after two.
        self._ttl = slot_ttl(settings.lease_ttl)
        self._worker_id = worker_id
        self._log = log
        self.slots = ConcurrencySlots(
            store.redis, settings.namespace, reserve_ttl=reserve_ttl(settings.lease_ttl)
        )
        self._by_agent: dict[str, tuple[ConcurrencyLimit, ...]] = {}
        self.held: dict[str, tuple[str, list[tuple[ConcurrencyLimit, str]]]] = {}
        """Per hosted run: its placement's token, and the rules whose slot it holds."""
        self._tasks: set[asyncio.Future[None]] = set()
        self.place_here: Callable[[Dispatch, str, Callable[[], Awaitable[None]]], bool] | None = (
            None
        )
        """Set by the worker: place a handed-on run on this worker (False: cannot now)."""
        self.usage: tuple[tuple[str, str, int, int], ...] = ()
        """(rule, key, running, waiting) of the busiest keys as of the last keep-alive: what
        the worker's gauges report."""

    def rules_for(self, agent: str) -> tuple[ConcurrencyLimit, ...]:
        """The limits that apply to ``agent``'s runs (cached)."""
        found = self._by_agent.get(agent)
        if found is None:
            found = self._by_agent[agent] = concurrency_rules(self.rules, agent)
        return found

    async def _input(self, req: RunRequest) -> Any:
        if req.kind == "start":
            return req.input
        # A resume request carries no input: the record has it.
        record = await self._store.get_run(req.run_id)
        return record.decode_input() if record is not None else None

    async def admit(self, req: RunRequest, msg: Msg, lease: Lease, lane: str) -> bool:
        """Take a slot of every limit of the run's agent, or park the run on the first full
        one (then the request is acked and False returned: the caller releases the lease).

        Raises on a server error (nothing is parked then; what was taken is given back).
        """
        rules = self.rules_for(req.agent)
        if not rules:
            return True
        value = await self._input(req) if any(r.needs_input for r in rules) else None
        token = str(lease.acquired)
        taken: list[tuple[ConcurrencyLimit, str]] = []
        try:
            for i, rule in enumerate(rules):
                try:
                    key = rule.key_of(req.agent, value)
                except Exception as exc:  # a user callable raised, a field is missing
                    key = self._no_key(req, rule, exc)
                priority = max(-MAX_PRIORITY, min(MAX_PRIORITY, req.priority + rule.priority))
                got = await self.slots.acquire(
                    rule,
                    key,
                    req.run_id,
                    token,
                    ttl=self._ttl,
                    priority=priority,
                    lane=lane,
                    request=bytes(msg.data),
                )
                self.publish(rule, got.dispatched)
                if got.outcome == "ok":
                    taken.append((rule, token))
                    continue
                await self._parked(req, rule, key, got.position, got.outcome == "parked")
                # A run waits on one limit at a time: what it took or was reserved on the
                # others goes to runs that can use it now.
                for other in rules[i + 1 :]:
                    self.publish(other, await self.slots.release(other, req.run_id, ""))
                await self.give_back(req.run_id, taken)
                taken = []
                await msg.ack()
                return False
        except BaseException:
            with contextlib.suppress(Exception):
                await self.give_back(req.run_id, taken)
            raise
        if taken:  # (the claim clears the record's queued_for)
            self.held[req.run_id] = (token, taken)
        return True

    def _no_key(self, req: RunRequest, rule: ConcurrencyLimit, exc: Exception) -> str:
        """A run whose key cannot be computed is refused when it starts (left unlimited, an
        input without its tenant field would escape the tenant's limit). A resume (the rule
        changed since the run started) waits under the shared key :data:`NO_KEY` instead:
        refusing it would end a run whose steps are journaled."""
        reason = (
            f"concurrency limit {rule.name!r} cannot compute the run's key "
            f"({rule.describe()}): {clip(safe_text(exc), 300)}"
        )
        if req.kind == "start":
            raise KeyUnavailable(reason)
        self._log.warning("concurrency.key_failed", run_id=req.run_id, reason=reason)
        return NO_KEY

    async def _parked(
        self, req: RunRequest, rule: ConcurrencyLimit, key: str, ahead: int, new: bool
    ) -> None:
        self._log.info(
            "concurrency.waiting", run_id=req.run_id, rule=rule.name, key=key, ahead=ahead, new=new
        )
        if not new:
            return  # a duplicate request of a run that waits already
        record = self._store.record_key(req.run_id)
        hold = self.slots.keys(rule.name)[0]
        # Written after the park: a slot handed on meanwhile is seen by the ZSCORE, and the
        # claim of the placement that took it clears the field.
        with contextlib.suppress(Exception):
            async with self._store.redis.pipeline(transaction=False) as pipe:
                pipe.hset(record, "queued_for", f"concurrency {rule.name} key {key}")
                pipe.zscore(hold, req.run_id)
                _, holder = await pipe.execute()
            if holder is not None:
                await self._store.redis.hdel(record, "queued_for")
        event = RunEvent(
            type=EV_CONCURRENCY_WAITING,
            run_id=req.run_id,
            at=time.time(),
            worker=self._worker_id,
            data=data_dict(
                ConcurrencyWaitingData(rule=rule.name, key=key, limit=rule.limit, ahead=ahead)
            ),
        )
        with contextlib.suppress(Exception):
            await self._broker.events.publish(event)

    async def give_back(self, run_id: str, taken: list[tuple[ConcurrencyLimit, str]]) -> None:
        """Release ``run_id``'s slots (those still held under their tokens); hand them on."""
        for rule, token in taken:
            self.publish(rule, await self.slots.release(rule, run_id, token))

    def left(self, run_id: str, lease: Lease) -> None:
        """The run's actor of the placement under ``lease`` ended (or the placement stopped
        before hosting it): release its slots. A newer placement's slots are left alone."""
        held = self.held.get(run_id)
        if held is not None and held[0] == str(lease.acquired):
            del self.held[run_id]
            self._spawn(self._release_logged(run_id, held[1]))

    async def _release_logged(self, run_id: str, taken: list[tuple[ConcurrencyLimit, str]]) -> None:
        try:
            await self.give_back(run_id, taken)
        except Exception as exc:  # the slots expire two lease TTLs after their last renewal
            self._log.warning("concurrency.release_failed", run_id=run_id, error=safe_text(exc))

    def publish(self, rule: ConcurrencyLimit, dispatched: tuple[Dispatch, ...]) -> None:
        """Start the runs just handed a slot: here when the worker can place them (see
        :attr:`place_here`), else by publishing their requests (in the background)."""
        for d in dispatched:
            msg_id = f"{d.run_id}:flow:{rule.name}:{d.number}"
            if self.place_here is not None and self.place_here(d, msg_id, self._to_nats(rule, d)):
                self._log.info("concurrency.handed_on", run_id=d.run_id, rule=rule.name, here=True)
                continue
            self._spawn(self._republish(rule, d))

    def _to_nats(self, rule: ConcurrencyLimit, d: Dispatch) -> Callable[[], Awaitable[None]]:
        async def send() -> None:
            await self._republish(rule, d)

        return send

    async def _republish(self, rule: ConcurrencyLimit, d: Dispatch) -> None:
        try:
            req = decode_request(d.request)
            # A new message id per hand-on: the original request's id may still be inside
            # the duplicate window. A reservation whose request is lost is handed on again.
            await self._broker.publish_request(
                req, msg_id=f"{d.run_id}:flow:{rule.name}:{d.number}", lane=d.lane
            )
            self._log.info("concurrency.handed_on", run_id=d.run_id, rule=rule.name)
        except Exception as exc:
            self._log.warning(
                "concurrency.hand_on_failed", run_id=d.run_id, rule=rule.name, error=safe_text(exc)
            )

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._tasks.discard)

    async def keep_alive(self, hosted: set[str]) -> None:
        """Renew the slots of runs still hosted; free dead holders' slots and hand them on.

        Called with the lease renewals. A slot found lost (Redis was out longer than a lease
        TTL) is logged: the run keeps executing without it.
        """
        by_rule: dict[str, list[tuple[str, str]]] = {}
        for run_id, (_, taken) in self.held.items():
            if run_id in hosted:
                for rule, token in taken:
                    by_rule.setdefault(rule.name, []).append((run_id, token))
        usage: list[tuple[str, str, int, int]] = []
        for rule in self.rules:
            for run_id in await self.slots.renew(rule.name, by_rule.get(rule.name, []), self._ttl):
                self._log.warning("concurrency.slot_lost", run_id=run_id, rule=rule.name)
            self.publish(rule, await self.slots.sweep(rule))
            snap = await self.slots.snapshot(rule.name, rule.limit, rule.total)
            usage += [(rule.name, k.key, k.running, k.waiting) for k in snap.keys]
        self.usage = tuple(usage)

    async def close(self) -> None:
        """Wait (briefly) for releases and hand-ons still being sent."""
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
