"""The public client: submit runs, wait for results, follow events, cancel."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

from stalwart import telemetry as obs
from stalwart._ids import check_agent_name, check_run_id, new_run_id
from stalwart._text import (
    ERROR_TEXT_LIMIT,
    clip,
    msgpack_may_nest_deeper,
    nesting_depth_exceeds,
    safe_text,
    type_name,
)
from stalwart.broker import Broker
from stalwart.checkpoints import (
    CancelOutcome,
    CheckpointStore,
    RunRecord,
    StepDone,
    StepError,
    decode_value,
    encode_value,
)
from stalwart.checkpoints._store import REJECTED_ERROR
from stalwart.config import Settings
from stalwart.errors import (
    ConfigurationError,
    InvalidRequestError,
    RunCancelled,
    RunFailed,
    RunNotFoundError,
    RunRejected,
    SignalRefusedError,
    UnknownAgentError,
)
from stalwart.messages import (
    EV_ACCEPTED,
    EV_CANCELLED,
    EV_REJECTED,
    EV_SIGNAL,
    TERMINAL_EVENTS,
    RunEvent,
    RunRequest,
    read_event,
)
from stalwart.observability import History, build_history, replay_run
from stalwart.telemetry import carrier_json

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from types import TracebackType

    from nats.aio.msg import Msg

    from stalwart.actors import App
    from stalwart.observability import ReplayReport


_RECHECK_SECONDS = 5.0


class _EndWatch:
    """What a waiter for a run's end has heard on the run's event subject.

    Events only wake the waiter; the run record decides. A rejection is the answer only
    for a run id that has no record (the request was refused before anything was stored).
    """

    def __init__(self) -> None:
        self.woken = asyncio.Event()
        self.rejected = ""

    def note(self, event: RunEvent) -> None:
        if event.type == EV_REJECTED:
            data = event.data if isinstance(event.data, dict) else {}
            self.rejected = safe_text(data.get("reason", "rejected"))
        if event.type in TERMINAL_EVENTS:
            self.woken.set()

    async def seen(self, msg: Msg) -> None:
        event = read_event(msg.data, msg.subject)
        if event is not None:  # garbage on the subject is skipped (and logged once)
            self.note(event)


class RunHandle:
    """A submitted run. Cheap to create; every method reads the servers afresh."""

    def __init__(self, client: Client, run_id: str, agent: str = "") -> None:
        self.client = client
        self.run_id = run_id
        self.agent = agent

    def __repr__(self) -> str:
        return f"RunHandle(run_id={self.run_id!r}, agent={self.agent!r})"

    async def status(self) -> RunRecord:
        """The run's record (status, epoch, owner, timestamps)."""
        record = await self.client.store.get_run(self.run_id)
        if record is None:
            raise RunNotFoundError(self.run_id)
        return record

    def events(self, *, follow: bool = True) -> AsyncIterator[RunEvent]:
        """The run's events from the first one; with ``follow``, live until the run ends.

        Messages on the run's subject that are not events are skipped. A terminal-looking
        event ends the iteration only when the run record agrees that the run has ended
        (or there is no record to ask): a stray ``request.rejected`` for a live run does not.
        """
        return self.client.broker.subscribe(self.run_id, follow=follow, ends=self._has_ended)

    async def _has_ended(self, event: RunEvent) -> bool:
        try:
            record = await self.client.store.get_run(self.run_id)
        except Exception:  # Redis unreachable: the event is all there is to go by
            return True
        return record is None or record.terminal

    async def result(self, timeout: float | None = None, *, type: Any = Any) -> Any:
        """Wait for the run to end and return its result (converted to ``type``).

        Raises :class:`RunFailed`, :class:`RunCancelled` or :class:`RunRejected` when the run
        did not complete, and ``TimeoutError`` when ``timeout`` passes first.
        """
        record = await self._wait_ended(timeout)
        if record.status == "completed":
            return record.decode_result(type)
        if record.status == "cancelled":
            raise RunCancelled(self.run_id, record.error or "cancelled")
        if record.error_type == REJECTED_ERROR:
            raise RunRejected(self.run_id, record.error)
        raise RunFailed(self.run_id, record.error_type, record.error)

    async def _wait_ended(self, timeout: float | None) -> RunRecord:
        # A plain subscription (no JetStream consumer): the terminal event only wakes us,
        # the record is the truth. Subscribed before the first look, so nothing slips by.
        broker = self.client.broker
        watch = _EndWatch()
        sub = await broker.nc.subscribe(broker.names.events_subject(self.run_id), cb=watch.seen)
        try:
            async with asyncio.timeout(timeout):
                return await self._poll_record(watch)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _poll_record(self, watch: _EndWatch) -> RunRecord:
        first = True
        while True:
            record = await self.client.store.get_run(self.run_id)
            if record is not None and record.terminal:
                return record
            if record is None:
                if first:  # rejected before we subscribed: its event is the run's last one
                    first = False
                    last = await self.client.broker.last_event(self.run_id)
                    if last is not None:
                        watch.note(last)
                if watch.rejected:
                    raise RunRejected(self.run_id, watch.rejected)
            # Re-read the record now and then in case the terminal event was never
            # published (a NATS outage).
            try:
                async with asyncio.timeout(_RECHECK_SECONDS):
                    await watch.woken.wait()
            except TimeoutError:
                continue
            watch.woken.clear()

    async def signal(self, name: str, payload: Any = None) -> str:
        """Send signal ``name`` with ``payload`` to the run; it is never lost.

        The signal is stored before anything else happens, so it reaches a wait that
        starts later, a run whose worker just died, or a passivated run (which is placed
        again to receive it). Returns ``stored`` or ``woke``. A signal over a limit
        (``signal_name_max``, ``signal_max_bytes``, ``signal_max_pending``) raises
        :class:`~stalwart.errors.SignalRefusedError` and stores nothing.
        """
        settings = self.client.settings
        _check_signal_name(name, settings)
        # Refuses what a worker could not decode too (nesting past max_nesting).
        raw = bytes(self.client._encode_checked(payload, f"signal {name!r} payload"))
        _check_signal_size(name, raw, settings)
        outcome, sid, epoch = await self.client.store.add_signal(
            self.run_id, name, raw, max_pending=settings.signal_max_pending
        )
        if outcome == "missing":
            raise RunNotFoundError(self.run_id)
        if outcome == "terminal":
            raise InvalidRequestError(f"run {self.run_id!r} has ended; signal {name!r} not sent")
        if outcome == "full":
            raise SignalRefusedError(
                f"run {self.run_id!r} already holds {epoch} unconsumed signals "
                f"(signal_max_pending={settings.signal_max_pending}); signal {name!r} not stored"
            )
        broker = self.client.broker
        # Stored: wake the run before anything that could fail on the way (the event).
        await broker.nc.publish(broker.names.signals_subject(self.run_id), b"")
        if outcome == "wake":
            await self._wake(epoch, f"{self.run_id}:wake:{sid}")
        await broker.events.publish(
            RunEvent(
                type=EV_SIGNAL, run_id=self.run_id, at=time.time(), data={"name": name, "sid": sid}
            ),
            acked=True,
        )
        return "woke" if outcome == "wake" else "stored"

    async def history(self) -> History:
        """The run's timeline from its journal (see :func:`stalwart.observability.build_history`)."""
        record = await self.client.store.get_run(self.run_id)
        entries = await self.client.store.read_journal(self.run_id)
        if record is None and not entries:
            raise RunNotFoundError(self.run_id)
        return build_history(self.run_id, entries, record)

    async def replay(self, app: App, *, timeout: float = 60.0) -> ReplayReport:
        """Run ``app``'s current code for this run against its journal, offline.

        No step body, model or tool is called; the report says whether the code still asks
        for the journaled steps with the same arguments and ends the same way (see
        :func:`stalwart.observability.replay_run`).
        """
        record = await self.status()
        entries = await self.client.store.read_journal(self.run_id)
        return await replay_run(app, record, entries, timeout=timeout)

    async def _wake(self, epoch: int, msg_id: str) -> None:
        record = await self.status()
        await self.client.broker.publish_request(
            RunRequest(run_id=self.run_id, agent=record.agent, kind="resume", epoch=epoch),
            msg_id=msg_id,
        )

    async def cancel(self, reason: str = "cancelled by client") -> CancelOutcome:
        """Cancel the run: at once if no worker placed it yet, else at its next step.

        Returns ``cancelled`` (ended now), ``requested`` (its owner stops at the next step
        boundary), ``terminal`` (it had already ended) or ``missing`` (unknown run id).
        """
        limit = self.client.settings.cancel_reason_max
        if not isinstance(reason, str) or len(reason) > limit:
            # Checked before anything is stored: the reason goes into the record and into
            # the run.cancelled event, which must fit one NATS message.
            raise InvalidRequestError(
                f"cancel reason must be a string of at most {limit} characters (cancel_reason_max)"
            )
        # A sender configured with a larger limit is still bounded like an error message:
        # the record keeps up to ERROR_TEXT_LIMIT, events cut it further.
        reason = clip(safe_text(reason), ERROR_TEXT_LIMIT)
        outcome, wake_epoch = await self.client.store.cancel_run(self.run_id, reason)
        # Poke a live waiter so it notices now; wake a passivated run so it can end.
        await self.client.broker.nc.publish(
            self.client.broker.names.signals_subject(self.run_id), b""
        )
        if wake_epoch is not None:
            await self._wake(wake_epoch, f"{self.run_id}:cancel:{wake_epoch}")
        if outcome == "cancelled":
            await self.client.broker.events.publish(
                RunEvent(
                    type=EV_CANCELLED,
                    run_id=self.run_id,
                    at=time.time(),
                    data={"error": {"type": "RunCancelled", "message": reason}},
                ),
                acked=True,
            )
        return outcome


def _check_signal_name(name: Any, settings: Settings) -> None:
    """Refuse a signal name outside the signal limits (before the payload is encoded)."""
    if not isinstance(name, str) or not name:
        raise SignalRefusedError(f"signal name must be a non-empty string, got {type(name)!r}")
    if len(name) > settings.signal_name_max:
        raise SignalRefusedError(
            f"signal name is {len(name)} characters, over signal_name_max "
            f"({settings.signal_name_max}): {name[:40]!r}..."
        )


def _check_signal_size(name: str, raw: bytes, settings: Settings) -> None:
    """Refuse an encoded signal payload over ``signal_max_bytes``."""
    if len(raw) > settings.signal_max_bytes:
        raise SignalRefusedError(
            f"signal {name!r}: the encoded payload is {len(raw)} bytes, over signal_max_bytes "
            f"({settings.signal_max_bytes}); pass large data by reference"
        )


class Client:
    """Connects to NATS and Redis to submit and observe runs.

    Use :meth:`connect` (or ``async with await Client.connect(...)``) and :meth:`close`.
    """

    def __init__(self, broker: Broker, store: CheckpointStore, settings: Settings) -> None:
        self.broker = broker
        self.store = store
        self.settings = settings

    @classmethod
    async def connect(
        cls,
        nats_url: str | None = None,
        redis_url: str | None = None,
        *,
        settings: Settings | None = None,
    ) -> Client:
        """Connect with explicit URLs, or ``STALWART_NATS_URL`` / ``STALWART_REDIS_URL``.

        Each server must answer within ``settings.connect_timeout`` seconds
        (``STALWART_CONNECT_TIMEOUT``, default 10), else :class:`ServerUnavailableError`
        names the URL (credentials masked) and the reason; a URL that is not a Redis or NATS
        URL raises :class:`ConfigurationError`. Worker-only settings in the environment are
        not read.
        """
        settings = settings or Settings.from_env(
            role="client", nats_url=nats_url, redis_url=redis_url
        )
        if not settings.nats_url or not settings.redis_url:
            raise ConfigurationError(
                "Client.connect needs a NATS URL and a Redis URL (arguments or "
                "STALWART_NATS_URL / STALWART_REDIS_URL)"
            )
        Broker.check_url(settings.nats_url)
        store = await CheckpointStore.connect(
            settings.redis_url, settings.namespace, connect_timeout=settings.connect_timeout
        )
        try:
            broker = await Broker.connect(settings, name="stalwart-client")
        except BaseException:
            await store.close()
            raise
        return cls(broker, store, settings)

    async def close(self) -> None:
        """Close both connections."""
        await self.broker.close()
        await self.store.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def handle(self, run_id: str, agent: str = "") -> RunHandle:
        """A handle for an existing run."""
        return RunHandle(self, check_run_id(run_id), agent)

    async def _reject(self, run_id: str, agent: str, reason: str, *, ended: bool = False) -> None:
        """Announce a refused submission on the run's subject, unless the id is a known run's.

        A refused request is not that run's end: an id that already names a run (another
        submit of it, or a mistaken reuse) must not get a ``request.rejected`` in its stream.
        ``ended``: the rejection did end this run (its record was just ended rejected).
        """
        if not ended and await self.store.get_run(run_id) is not None:
            return
        await self.broker.events.publish(
            RunEvent(
                type=EV_REJECTED,
                run_id=run_id,
                at=time.time(),
                data={"reason": reason, "agent": agent},
            ),
            acked=True,
        )

    async def submit(
        self,
        agent: str,
        input: Any = None,
        *,
        run_id: str | None = None,
        require_registered: bool = True,
    ) -> RunHandle:
        """Start a run of ``agent`` with ``input`` and return its handle at once.

        Submitting a run id that is already known returns the same run and never starts a
        second one. With ``require_registered`` (the default) an agent that no worker has
        ever registered is refused with :class:`UnknownAgentError`; turn it off to queue
        runs before the first worker of a new agent has started (a request nothing consumes
        is rejected after ``unserved_after``). A full runs stream raises
        :class:`~stalwart.errors.QueueFullError` and ends the run rejected.
        """
        check_agent_name(agent)
        run_id = check_run_id(run_id) if run_id is not None else new_run_id()
        subject = self.broker.names.runs_subject(agent)
        # The submit span is the parent of the run's spans on every worker that places it.
        with obs.producer_span("submit", agent, run_id, subject) as trace:
            return await self._submit(agent, input, run_id, require_registered, trace)

    def _encode_checked(self, value: Any, what: str) -> Any:
        """``value`` encoded for the wire, or :class:`InvalidRequestError` saying why not.

        Refuses what a worker could not decode: values nested deeper than ``max_nesting``
        (checked on the encoded form, so Structs and dataclasses count too) and values
        msgspec cannot encode at all (unsupported types, nesting past the interpreter's
        recursion limit).
        """
        limit = self.settings.max_nesting
        try:
            raw = encode_value(value)
            # Every level takes at least one byte: a short encoding cannot be too deep.
            deep = msgpack_may_nest_deeper(bytes(raw), limit) and nesting_depth_exceeds(
                decode_value(raw), limit
            )
        except RecursionError:
            deep = True
        except Exception as exc:
            raise InvalidRequestError(
                f"{what} of type {type_name(value)} cannot be encoded "
                f"({clip(safe_text(exc), 300)}); pass plain data, a msgspec Struct or a dataclass"
            ) from None
        if deep:
            raise InvalidRequestError(
                f"{what} is nested more than max_nesting ({limit}) levels deep"
            )
        return raw

    async def _submit(
        self,
        agent: str,
        input: Any,
        run_id: str,
        require_registered: bool,
        trace: dict[str, str],
    ) -> RunHandle:
        if require_registered and not await self.broker.agent_known(agent):
            known = ", ".join(await self.broker.known_agents()) or "none"
            reason = f"no worker serves agent {agent!r} (registered agents: {known})"
            await self._reject(run_id, agent, reason)
            raise UnknownAgentError(reason)
        raw_input = self._encode_checked(input, f"run {run_id!r}: input")
        request = RunRequest(
            run_id=run_id, agent=agent, input=input, submitted_at=time.time(), trace=trace
        )
        try:
            self.broker.encode_request(request)
        except InvalidRequestError as exc:
            await self._reject(run_id, agent, str(exc))
            raise
        except Exception as exc:  # what encode_value accepted must encode here too
            raise InvalidRequestError(
                f"run {run_id!r}: the request cannot be encoded ({clip(safe_text(exc), 300)})"
            ) from None
        existing = await self.store.create_run(run_id, agent, raw_input, trace=carrier_json(trace))
        if existing is not None:
            status, known_agent = existing
            if known_agent and known_agent != agent:
                raise InvalidRequestError(
                    f"run id {run_id!r} already belongs to a run of agent {known_agent!r}"
                )
            if status != "accepted":
                return RunHandle(self, run_id, agent)
            # Accepted but maybe never published (the submitter died in between): publish
            # again; JetStream drops it if the first copy is still in the dedup window.
        else:
            await self.broker.events.publish(
                RunEvent(type=EV_ACCEPTED, run_id=run_id, at=time.time(), data={"agent": agent}),
                acked=True,
            )
        await self._publish_new(request)
        return RunHandle(self, run_id, agent)

    async def _publish_new(self, request: RunRequest) -> None:
        """Publish a new run's request; if the runs stream refuses it, end the run rejected.

        The run was recorded ``accepted`` just before; left so, nothing would ever end it.
        """
        try:
            await self.broker.publish_request(request, msg_id=request.run_id)
        except InvalidRequestError as exc:  # the runs stream refused it (full, too large)
            outcome = await self.store.reject(request.run_id, request.agent, str(exc))
            if outcome != "skipped":
                await self._reject(
                    request.run_id, request.agent, str(exc), ended=outcome == "rejected"
                )
            raise

    async def fork(self, run_id: str, *, at: str, new_id: str | None = None) -> RunHandle:
        """Start a new run that reuses ``run_id``'s journal up to step ``at`` and goes on live.

        The new run (``new_id``, random by default) has the same agent and input. Its
        journal starts as a copy of the source's entries up to and including step ``at`` (a
        step key such as ``step:plan`` or ``model:3``; a plain step name ``plan`` is read as
        ``step:plan``), so a worker replays those steps and runs every step after them
        live: retry a run from a step with new code, a fixed tool, or another model answer.
        Raises :class:`InvalidRequestError` for an unknown run or step, or a taken id.
        """
        run_id = check_run_id(run_id)
        dst = check_run_id(new_id) if new_id is not None else new_run_id()
        record = await self.store.get_run(run_id)
        if record is None:
            raise RunNotFoundError(run_id)
        key = await self._step_key(run_id, at)
        subject = self.broker.names.runs_subject(record.agent)
        attrs = {"stalwart.forked_from": run_id, "stalwart.fork_step": key}
        with obs.producer_span("fork", record.agent, dst, subject, **attrs) as trace:
            record = await self.store.fork_run(run_id, dst, key, trace=carrier_json(trace))
            await self.broker.events.publish(
                RunEvent(
                    type=EV_ACCEPTED,
                    run_id=dst,
                    at=time.time(),
                    data={"agent": record.agent, "forked_from": run_id, "at": key},
                ),
                acked=True,
            )
            await self._publish_new(
                RunRequest(
                    run_id=dst,
                    agent=record.agent,
                    input=record.decode_input(),
                    submitted_at=time.time(),
                    trace=trace,
                )
            )
        return RunHandle(self, dst, record.agent)

    async def _step_key(self, run_id: str, at: str) -> str:
        """``at`` as a journaled step key of ``run_id`` (``plan`` finds ``step:plan``)."""
        if ":" in at:
            return at
        keys = {
            je.entry.key
            for je in await self.store.read_journal(run_id)
            if isinstance(je.entry, StepDone | StepError)
        }
        return f"step:{at}" if f"step:{at}" in keys and at not in keys else at

    async def runs(self, limit: int = 100) -> list[RunRecord]:
        """The newest runs, newest first; ``limit`` must be >= 1."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            # 0 used to list every run and -1 all but one (a slice bound).
            raise InvalidRequestError(f"limit must be a whole number >= 1, got {limit!r}")
        return await self.store.list_runs(limit)
