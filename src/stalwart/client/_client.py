"""``Client``: submit runs, fork them, list them, and hand out :class:`RunHandle` s."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import msgspec

from stalwart import telemetry as obs
from stalwart._ids import check_agent_name, check_lane, check_run_id, new_run_id
from stalwart._text import (
    clip,
    msgpack_may_nest_deeper,
    nesting_depth_exceeds,
    safe_text,
    type_name,
)
from stalwart.broker import Broker
from stalwart.broker._all_events import all_events, events_filter
from stalwart.checkpoints import (
    CheckpointStore,
    RunRecord,
    StepDone,
    StepError,
    check_conversation_id,
    check_on_busy,
    decode_value,
    encode_value,
    seal_bytes,
)
from stalwart.checkpoints._codec import install_codec, is_sealed
from stalwart.client._handle import RunHandle, opened_events
from stalwart.config import Settings
from stalwart.conversations import release_ended
from stalwart.errors import (
    ConfigurationError,
    ConversationBusyError,
    InvalidRequestError,
    RunNotFoundError,
    UnknownAgentError,
)
from stalwart.flow._concurrency import priority_of
from stalwart.messages import RunEvent, RunRequest
from stalwart.telemetry import carrier_json

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from types import TracebackType


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
        URL raises :class:`ConfigurationError`, and so does a TLS, nkey or ``.creds`` setting
        whose file cannot be used (see docs/security.md). Worker-only settings in the
        environment are not read. Settings that name an encryption key install the payload
        codec (``encryption_key`` / ``encryption_keys_file``).
        """
        settings = settings or Settings.from_env(
            role="client", nats_url=nats_url, redis_url=redis_url
        )
        install_codec(settings)
        if not settings.nats_url or not settings.redis_url:
            raise ConfigurationError(
                "Client.connect needs a NATS URL and a Redis URL (arguments or "
                "STALWART_NATS_URL / STALWART_REDIS_URL)"
            )
        Broker.check_url(settings.nats_url)
        store = await CheckpointStore.connect(
            settings.redis_url,
            settings.namespace,
            connect_timeout=settings.connect_timeout,
            settings=settings,
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
        await self.broker.announce_rejected(run_id, agent, reason)

    async def submit(
        self,
        agent: str,
        input: Any = None,
        *,
        run_id: str | None = None,
        require_registered: bool = True,
        lane: str = "",
        priority: int = 0,
        conversation: str = "",
        on_busy: str = "queue",
    ) -> RunHandle:
        """Start a run of ``agent`` with ``input`` and return its handle at once.

        ``conversation`` (1-128 characters from A-Z a-z 0-9 _ -) makes the run a turn of that
        conversation: it sees the items earlier turns appended (``ctx.conversation``).
        ``on_busy`` says what happens while another run of the conversation is going:
        ``queue`` (wait, in submit order), ``reject`` (raise
        :class:`~stalwart.errors.ConversationBusyError` now, storing nothing; a run that
        loses a race on its worker fails with ``conversation.busy``) or ``interrupt``
        (cancel the running one and take over). See docs/conversations.md.

        ``priority`` (-1000 to 1000, higher first) orders the run among runs waiting for a
        slot of a concurrency limit (``stalwart.flow.ConcurrencyLimit``); it is added to the
        limit's own priority. It changes nothing for runs that do not wait.

        ``lane`` (a-z 0-9 _ -, up to 32 characters; "" is the default lane) sends the run to
        the workers started with that lane in ``--lanes`` (a priority, build or region
        lane): only they place it, also when it is resumed. With ``require_registered`` a
        lane no worker has ever served is refused like an unknown agent.

        Submitting a run id that is already known returns the same run and never starts a
        second one. With ``require_registered`` (the default) an agent that no worker has
        ever registered is refused with :class:`UnknownAgentError`; turn it off to queue
        runs before the first worker of a new agent has started (a request nothing consumes
        is rejected after ``unserved_after``). A full runs stream raises
        :class:`~stalwart.errors.QueueFullError` and ends the run rejected.
        """
        check_agent_name(agent)
        check_lane(lane)
        run_id = check_run_id(run_id) if run_id is not None else new_run_id()
        check_conversation_id(conversation)
        check_on_busy(on_busy)
        try:
            priority_of(priority, f"run {run_id!r}: priority")
        except ConfigurationError as exc:
            raise InvalidRequestError(str(exc)) from None
        subject = self.broker.names.runs_subject(agent, lane)
        # The submit span is the parent of the run's spans on every worker that places it.
        with obs.producer_span("submit", agent, run_id, subject) as trace:
            return await self._submit(
                agent,
                input,
                run_id,
                require_registered,
                trace,
                lane,
                priority,
                conversation,
                on_busy,
            )

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
        lane: str = "",
        priority: int = 0,
        conversation: str = "",
        on_busy: str = "queue",
    ) -> RunHandle:
        if require_registered and not await self.broker.agent_known(agent):
            known = ", ".join(await self.broker.known_agents()) or "none"
            reason = f"no worker serves agent {agent!r} (registered agents: {known})"
            await self._reject(run_id, agent, reason)
            raise UnknownAgentError(reason)
        if require_registered and lane and not await self.broker.lane_known(agent, lane):
            reason = f"no worker has served agent {agent!r} in lane {lane!r}"
            await self._reject(run_id, agent, reason)
            raise UnknownAgentError(reason)
        raw_input = self._encode_checked(input, f"run {run_id!r}: input")
        # With a payload codec the input travels and is stored sealed (the same envelope in
        # the request and the record); without one, both are exactly what they always were.
        plain = bytes(raw_input)
        sealed = seal_bytes(plain)
        wire_input = input if sealed is plain else msgspec.Raw(sealed)
        request = RunRequest(
            run_id=run_id,
            agent=agent,
            input=wire_input,
            submitted_at=time.time(),
            trace=trace,
            priority=priority,
            conversation=conversation,
            on_busy=check_on_busy(on_busy),
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
        if conversation and on_busy == "reject" and await self.store.get_run(run_id) is None:
            busy, blocker = await self.store.conversations.enqueue(
                conversation, run_id, on_busy="reject", submitted_at=request.submitted_at
            )
            if busy == "busy":
                error = ConversationBusyError(conversation, blocker)
                await self._reject(run_id, agent, str(error))
                raise error
        existing = await self.store.create_run(
            run_id, agent, msgspec.Raw(sealed), trace=carrier_json(trace), lane=lane
        )
        if conversation and existing is None:
            await self.store.set_conversation(run_id, conversation, on_busy)
            if on_busy == "queue":  # its place in line is its submit time
                await self.store.conversations.enqueue(
                    conversation, run_id, on_busy="queue", submitted_at=request.submitted_at
                )
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
            await self.broker.announce_accepted(run_id, agent)
        await self._publish_new(request, lane)
        return RunHandle(self, run_id, agent)

    async def _publish_new(self, request: RunRequest, lane: str = "") -> None:
        """Publish a new run's request; if the runs stream refuses it, end the run rejected.

        The run was recorded ``accepted`` just before; left so, nothing would ever end it.
        """
        try:
            await self.broker.submit(request, lane)
        except InvalidRequestError as exc:  # the runs stream refused it (full, too large)
            outcome = await self.store.reject(request.run_id, request.agent, str(exc))
            if request.conversation:
                await release_ended(self.store, self.broker, request.run_id)
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
            await self.broker.announce_accepted(dst, record.agent, forked_from=run_id, at=key)
            await self._publish_new(
                RunRequest(
                    run_id=dst,
                    agent=record.agent,
                    # A sealed input is passed on as it is: forking needs no key.
                    input=record.input
                    if record.input is not None and is_sealed(record.input)
                    else record.decode_input(),
                    submitted_at=time.time(),
                    trace=trace,
                )
            )
        return RunHandle(self, dst, record.agent)

    async def retry(self, run_id: str, *, new_id: str | None = None) -> RunHandle:
        """Start ``run_id`` again from the beginning, as a new run with the same input.

        For a run that ended without a result: dead-lettered (its request was never
        delivered), rejected (no worker served it), failed or cancelled. The new run
        (``new_id``, random by default) has the same agent, lane and input and an empty
        journal; the ended run keeps its record, journal and events as they are (a terminal
        run never changes, so whoever read its end is never contradicted). Raises
        :class:`RunNotFoundError` for an unknown run and :class:`InvalidRequestError` for a
        run that completed or has not ended yet (cancel it first), or for a taken ``new_id``.
        Use :meth:`fork` to keep the steps a run already did.
        """
        run_id = check_run_id(run_id)
        dst = check_run_id(new_id) if new_id is not None else new_run_id()
        record = await self.store.get_run(run_id)
        if record is None:
            raise RunNotFoundError(run_id)
        if not record.terminal or record.status == "completed":
            what = "completed" if record.status == "completed" else f"is still {record.status}"
            raise InvalidRequestError(
                f"run {run_id!r} {what}: only a failed, cancelled, rejected or dead-lettered "
                "run can be retried (cancel a live run first, or fork it from a step)"
            )
        subject = self.broker.names.runs_subject(record.agent, record.lane)
        attrs = {"stalwart.retried_from": run_id}
        with obs.producer_span("retry", record.agent, dst, subject, **attrs) as trace:
            # The stored input is passed on as stored (sealed or not): retrying needs no key.
            raw = record.input if record.input is not None else msgspec.Raw(encode_value(None))
            existing = await self.store.create_run(
                dst, record.agent, raw, trace=carrier_json(trace), lane=record.lane
            )
            if existing is not None:
                raise InvalidRequestError(f"run id {dst!r} is taken (by a run of {existing[1]!r})")
            await self.broker.announce_accepted(dst, record.agent)
            await self._publish_new(
                RunRequest(
                    run_id=dst,
                    agent=record.agent,
                    input=raw if is_sealed(raw) else record.decode_input(),
                    submitted_at=time.time(),
                    trace=trace,
                ),
                record.lane,
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

    def events(
        self, *, agent: str | None = None, after: int = 0, follow: bool = True
    ) -> AsyncIterator[RunEvent]:
        """Every run's events (``agent``'s only, when given), in the order the events
        stream stored them, each with its stream sequence in ``seq``.

        Starts after stream sequence ``after`` (0: from the first event still retained), so
        a reader that remembers the last ``seq`` it handled resumes where it left off. With
        ``follow`` it goes on live until closed; without it, it ends at the event that was
        last when it started. Messages that are not events are skipped; encrypted payloads
        are opened as in :meth:`RunHandle.events`. Raises ``ValueError`` for a negative
        ``after`` and :class:`~stalwart.errors.ConfigurationError` for an unusable agent
        name.
        """
        broker = self.broker
        events_filter(broker.names, agent, after)  # raises now, not at the first event
        found = all_events(
            broker.nc, broker.js, broker.names, agent=agent, after=after, follow=follow
        )
        return opened_events(found)
