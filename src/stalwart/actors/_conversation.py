"""A run's turn of its conversation: claim at start, ``ctx.conversation``, release at the end.

The claim is a journaled step (``conversation:claim``), so a resumed run that already holds
the conversation keeps it (the claim is answered from the journal, then re-asserted in Redis
for the new epoch). A run that has to wait for its turn waits durably for
:data:`~stalwart.conversations.WAKE_SIGNAL` (passivated after ``passivate_after`` like any
wait), with a timeout of ``conversation_recheck`` after which it repairs a lost hand-off and
claims again (a claim that finds the conversation busy makes the same repair at once). ``history()`` journals only the number of items it read and reads that prefix
again on replay; ``append()`` is a fenced step, at most once per key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from stalwart.actors._context import StepSpec
from stalwart.actors._fingerprint import fingerprint
from stalwart.actors._waits import WaitTimeout
from stalwart.checkpoints import ConversationClaim, ConversationFenced, ErrorInfo
from stalwart.conversations import WAKE_SIGNAL, interrupt, recover, release
from stalwart.errors import ConversationBusyError, InvalidRequestError, LeaseLost

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from stalwart.broker import Broker
    from stalwart.checkpoints import CheckpointStore


class TurnHost(Protocol):
    """What a turn needs of its run: the live actor, or offline replay (which answers every
    step and wait from the journal and never runs a body)."""

    @property
    def run_id(self) -> str: ...

    @property
    def epoch(self) -> int: ...

    async def execute(self, spec: StepSpec, run: Callable[[], Awaitable[Any]]) -> Any: ...

    async def wait(self, key: str, signal: str, timeout: float | None) -> Any: ...


__all__ = ["BUSY_ERROR", "Conversation", "ConversationBusy", "TurnBinding", "TurnHost"]

BUSY_ERROR = ConversationBusyError.error_type
"""The error type of a run whose claim lost a race under ``on_busy="reject"``."""

_KIND = "conversation"


class ConversationBusy(Exception):
    """The worker-side claim of a ``reject`` run lost (internal: the run fails with it)."""

    def __init__(self, info: ErrorInfo) -> None:
        super().__init__(info.message)
        self.info = info


class Conversation:
    """The conversation a run is a turn of (``ctx.conversation``).

    ``id`` is the conversation id, ``turn`` the number of turns completed before this one
    (0 for the first run of a conversation).
    """

    def __init__(self, binding: TurnBinding, turn: int) -> None:
        self._b = binding
        self.id = binding.conversation
        self.turn = turn
        self._counts: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"Conversation(id={self.id!r}, turn={self.turn})"

    def _key(self, base: str) -> str:
        n = self._counts.get(base, 0) + 1
        self._counts[base] = n
        return f"{_KIND}:{base}" if n == 1 else f"{_KIND}:{base}#{n}"

    async def history(self) -> list[Any]:
        """Every item appended so far: the previous turns' (and this turn's own appends
        before this call), as plain data, in order. Durable: the count read is journaled
        and the same prefix is read again on replay (items are stored once, in Redis)."""
        b = self._b
        key = self._key("history")
        spec = StepSpec(
            key=key, kind=_KIND, name="history", fp=fingerprint("history", (), {}), result_type=int
        )
        convs = b.store.conversations

        async def count() -> int:
            return await convs.count(b.conversation)

        n: int = await b.actor.execute(spec, count)
        return await convs.items(b.conversation, n)

    async def append(self, items: list[Any]) -> None:
        """Add this turn's new items (plain data). Durable and fenced: only the run holding
        the conversation can append, and a replayed or retried append adds nothing twice.
        The items stay if this run completes; a run that fails, is cancelled or is
        interrupted leaves the conversation as the last completed turn left it."""
        if not isinstance(items, list):
            raise InvalidRequestError(
                f"conversation {self.id!r}: append takes a list of items, "
                f"not {type(items).__name__}"
            )
        b = self._b
        key = self._key("append")
        convs = b.store.conversations

        async def put() -> int:
            assert b.fence is not None  # a Conversation exists only once held
            return await convs.append(
                b.conversation,
                b.actor.run_id,
                fence=b.fence,
                epoch=b.actor.epoch,
                key=key,
                items=items,
            )

        spec = StepSpec(
            key=key,
            kind=_KIND,
            name="append",
            fp=fingerprint("append", (len(items),), {}),
            result_type=int,
        )
        await b.actor.execute(spec, put)


class TurnBinding:
    """One placement's part in a run's conversation: the claim, the fence, the release."""

    def __init__(
        self,
        actor: TurnHost,
        conversation: str,
        on_busy: str,
        created_at: float,
        *,
        store: CheckpointStore,
        broker: Broker | None,
    ) -> None:
        self.actor = actor
        self.store = store
        """Where the items are read (offline replay reads them too, and writes nothing)."""
        self.broker = broker
        """None in offline replay, which never runs a claim's body."""
        self.conversation = conversation
        self.on_busy = on_busy
        self.created_at = created_at
        self.fence: int | None = None
        """The fence of this run's hold (None until it holds the conversation)."""
        self.view: Conversation | None = None
        """What ``ctx.conversation`` returns once held."""
        self._claimed_live = False

    async def claim(self, recheck: float) -> Conversation:
        """Hold the conversation before the agent runs: at once, after waiting for the
        turn (queue, interrupt), or not at all (reject: :class:`ConversationBusy`)."""
        actor = self.actor
        n = 0
        while True:
            n += 1
            key = f"{_KIND}:claim" if n == 1 else f"{_KIND}:claim#{n}"
            self._claimed_live = False
            spec = StepSpec(
                key=key,
                kind=_KIND,
                name=f"claim {self.conversation}",
                fp=fingerprint("claim", (self.conversation, self.on_busy), {}),
                result_type=dict,
            )
            got: dict[str, Any] = await actor.execute(spec, self._claim_once)
            outcome = got["outcome"]
            if outcome == "held":
                if not self._claimed_live and self.broker is not None:  # live, resumed
                    await self._reassert()
                self.fence = int(got["fence"])
                self.view = Conversation(self, int(got["turns"]))
                return self.view
            if outcome == "busy":
                error = ConversationBusyError(self.conversation, str(got.get("blocker", "")))
                raise ConversationBusy(ErrorInfo(BUSY_ERROR, str(error), retryable=False))
            wait_key = f"{_KIND}:turn" if n == 1 else f"{_KIND}:turn#{n}"
            try:
                await actor.wait(wait_key, WAKE_SIGNAL, recheck)
            except WaitTimeout:
                pass  # claim again: the re-check

    async def _claim_once(self) -> dict[str, Any]:
        """The body of a claim step (live only): claim, interrupt the holder if that is the
        policy. A conversation that looks busy is first checked for a hand-off a dead worker
        never made (its holder ended, or ended runs head its queue) and claimed again if that
        repaired anything: at a first claim as at a re-check."""
        actor = self.actor
        store, broker = self.store, self.broker
        assert broker is not None  # a claim's body runs live only
        self._claimed_live = True

        async def claim() -> ConversationClaim:
            return await store.conversations.claim(
                self.conversation,
                actor.run_id,
                on_busy=self.on_busy,
                submitted_at=self.created_at,
                epoch=actor.epoch,
            )

        c = await claim()
        if c.outcome in ("queued", "busy") and await recover(store, broker, self.conversation):
            c = await claim()
        if c.outcome == "stale":
            raise LeaseLost(
                f"run {actor.run_id!r}: a newer owner holds conversation {self.conversation!r}"
            )
        if c.outcome == "queued" and self.on_busy == "interrupt" and c.holder:
            await interrupt(store, broker, c.holder, actor.run_id)
        return {"outcome": c.outcome, "blocker": c.blocker, "fence": c.fence, "turns": c.turns}

    async def _reassert(self) -> None:
        """A resumed holder: make the hold name this placement's epoch (an older owner of the
        run is fenced from then on)."""
        actor = self.actor
        c = await self.store.conversations.claim(
            self.conversation,
            actor.run_id,
            on_busy="queue",
            submitted_at=self.created_at,
            epoch=actor.epoch,
        )
        if c.outcome != "held":
            raise ConversationFenced(
                f"run {actor.run_id!r} journaled a hold of conversation {self.conversation!r} "
                f"that it no longer has (held by {c.holder!r})"
            )

    async def release(self, status: str) -> None:
        """The run ended (``status``): give the hold up and wake the next run."""
        assert self.broker is not None
        await release(
            self.store,
            self.broker,
            self.conversation,
            self.actor.run_id,
            fence=self.fence,
            completed=status == "completed",
        )
