"""Per-run versions of a framework object, chosen by a patch marker: :class:`Patched`.

Adapters fingerprint each model request (the conversation, and the request's shape:
instructions, tools, output type), so a run started with one prompt or tool list fails with
:class:`~stalwart.errors.NonDeterminismError` if it is resumed by code with another. A
:class:`Patched` factory lets a deploy change them for new runs only: every runner decides
its ``Patched`` factories when a run starts (``ctx.patched(change_id)``, journaled), and the
factory then builds the new object for runs that took the patch and the old one for runs
that were already under way without it.
"""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from stalwart.actors._patches import check_change_id
from stalwart.errors import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Callable

    from stalwart.actors import RunContext

T = TypeVar("T")

_decided: contextvars.ContextVar[dict[str, bool] | None] = contextvars.ContextVar(
    "stalwart_patched_factories", default=None
)


class Patched(Generic[T]):
    """A runner's factory that builds ``new()`` for runs that take change ``change_id`` and
    ``old()`` for runs that started without it.

    Give it where a runner takes its framework object or factory, e.g.
    ``DurableAgentRunner("support", Patched("prompt-v2", new=build_v2, old=build_v1))``.
    The runner asks ``ctx.patched(change_id)`` when a run starts (a new run journals the
    marker as its first step; a run that already journaled steps does not, and keeps ``old``
    for good). Outside a run (a client decoding a result) it builds ``new``. ``new`` and
    ``old`` are zero-argument functions; once no run that started without the change is left,
    replace the whole ``Patched`` by ``new``, or keep it with the same ``old`` as long as
    runs with the marker may still be resumed (see docs/deploys.md).
    """

    def __init__(
        self, change_id: str, *, new: Callable[[], T], old: Callable[[], T] | None
    ) -> None:
        self.change_id = check_change_id(change_id)
        if not (callable(new) and (old is None or callable(old))):
            raise ConfigurationError(
                "Patched(new=..., old=...) takes zero-argument functions that build the "
                "framework object (lambda: agent for an object built once); old=None "
                "deprecates the patch"
            )
        self.new = new
        self.old = old

    def __call__(self) -> T:
        """The object this run works on (``new`` outside a run)."""
        decided = _decided.get()
        taken = True if decided is None else decided.get(self.change_id, True)
        if taken or self.old is None:
            return self.new()
        return self.old()


async def decide_patched(ctx: RunContext, owner: Any) -> contextvars.Token[dict[str, bool] | None]:
    """Decide every :class:`Patched` factory among ``owner``'s attributes for this run.

    Returns the token to reset the decisions with; a runner with no ``Patched`` factory
    journals nothing.
    """
    factories = [v for v in vars(owner).values() if isinstance(v, Patched)]
    decided: dict[str, bool] = {}
    for factory in factories:
        if factory.old is None:
            await ctx.deprecate_patch(factory.change_id)
            decided[factory.change_id] = True
        else:
            decided[factory.change_id] = await ctx.patched(factory.change_id)
    return _decided.set(decided)


def reset_patched(token: contextvars.Token[dict[str, bool] | None]) -> None:
    """Undo :func:`decide_patched`."""
    _decided.reset(token)
