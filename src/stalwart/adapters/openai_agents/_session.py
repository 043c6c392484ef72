"""``StalwartSession``: the SDK's ``Session`` protocol over a run's durable conversation.

A run submitted with ``conversation=`` has ``ctx.conversation`` on its worker; the runner
hands the SDK's loop a :class:`StalwartSession` over it, so the SDK does what it does with
any session: it reads the history before the first model call, puts it before the new
input, and adds the new input and the generated items as the run goes.

Reads and writes map onto the conversation's two durable operations:

- the history of the previous turns is read once per run (``conv.history()``: the count
  read is journaled, the items stay in Redis, a replay reads the same prefix);
- what the SDK adds during the run is kept in the run and appended as this turn's items
  in one ``conv.append`` when the run's loop has finished. A run that fails, or is
  interrupted, adds nothing: the conversation's turns are whole turns. A resumed run re-runs
  the loop, which adds the same items again, and the append happens once.

``pop_item`` takes back an item added during this run (the SDK's rewind of a retried
model request does that); the previous turns' items are the conversation's record and are
neither popped nor cleared from inside a run (:class:`SessionHistoryError`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from pydantic_core import to_jsonable_python

from stalwart.errors import ConfigurationError

if TYPE_CHECKING:
    from agents.items import TResponseInputItem
    from agents.memory import SessionSettings


class Conversation(Protocol):
    """What the session needs of ``ctx.conversation`` (a run's durable conversation)."""

    @property
    def id(self) -> str: ...

    async def history(self) -> list[Any]: ...

    async def append(self, items: list[Any]) -> None: ...


class SessionHistoryError(ConfigurationError):
    """A change to a durable conversation's earlier turns, asked for from inside a run."""


class StalwartSession:
    """An SDK ``Session`` over one run's conversation (see the module docs).

    ``session_id`` is the conversation id. Built by the runner on the worker for a run with
    ``conversation=``; user code does not make one.
    """

    session_settings: SessionSettings | None = None

    def __init__(self, conversation: Conversation) -> None:
        self.conversation = conversation
        self.session_id = conversation.id
        self._history: list[Any] | None = None
        self._added: list[Any] = []
        self._committed = False

    async def _earlier(self) -> list[Any]:
        # One durable read per run: a second history() would journal a second count.
        if self._history is None:
            self._history = list(await self.conversation.history())
        return self._history

    async def get_items(self, limit: int | None = None) -> list[TResponseInputItem]:
        """The previous turns' items, then what this run added so far (the last ``limit``)."""
        items = [*(await self._earlier()), *self._added]
        if limit is not None:
            items = items[-limit:] if limit > 0 else []
        return items

    async def add_items(self, items: list[TResponseInputItem]) -> None:
        """Keep ``items`` for this turn; appended to the conversation when the run's loop ends."""
        if self._committed:
            raise SessionHistoryError(
                f"conversation {self.session_id!r}: this turn's items were already appended; "
                "a run adds its items once, when its loop ends"
            )
        # Plain data, as the conversation stores it (the SDK may hand pydantic objects).
        self._added.extend(to_jsonable_python(item) for item in items)

    async def pop_item(self) -> TResponseInputItem | None:
        """Take back the last item this run added (None when it added none)."""
        if self._added:
            item: TResponseInputItem = self._added.pop()
            return item
        if await self._earlier():
            raise SessionHistoryError(
                f"conversation {self.session_id!r}: the items of earlier turns cannot be "
                "popped from inside a run (they are the conversation's durable record); "
                "start a new conversation id to change the history"
            )
        return None

    async def clear_session(self) -> None:
        """Refused: a durable conversation's history is not cleared from inside a run."""
        raise SessionHistoryError(
            f"conversation {self.session_id!r} cannot be cleared from inside a run: its "
            "earlier turns are the conversation's durable record; start a new conversation id"
        )

    @property
    def new_items(self) -> list[Any]:
        """What this run added so far (this turn's items)."""
        return list(self._added)

    async def commit(self) -> None:
        """Append this turn's items to the conversation (durable: once per run)."""
        if self._committed:
            return
        self._committed = True
        if self._added:
            await self.conversation.append(list(self._added))
