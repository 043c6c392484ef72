"""The epoch fence: a write to a run's data happens only while the writer's epoch owns it.

Spelled once, in Lua (:data:`FENCE`), and used by every fenced script: the journal's own
(``APPEND``, ``FINISH``, ``PASSIVATE``) and any an adapter keeps by a run (the LangGraph
saver's checkpoints). :class:`Fence` is its pure Python side: the keys and arguments a
fenced script takes, and the reading of its reply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stalwart.checkpoints._keys import RunKeys
from stalwart.errors import LeaseLost

# The contract of a fenced script: KEYS[1] is the run record, ARGV[1] the writer's epoch
# ('' for a writer that is not bound to a run: no fencing). A stale writer gets
# {'stale', <current epoch>} and nothing is written; otherwise the script goes on with
# `cancel` set to the run's pending cancellation reason ('' for none), read in the same
# round trip so a writer learns of a cancel without asking.
#
# It starts with a write before anything is read: a replica (a demoted primary, or a node a
# client still takes for the primary) refuses it with READONLY, a retryable error, before the
# fence (or a script's own checks, such as the journal's continuity) could read its stale
# copy and answer 'stale' or 'gap'. Deleting a field that never exists changes nothing (and
# replicates nothing).
FENCE = """
redis.call('HDEL', KEYS[1], '~')
local fence = redis.call('HMGET', KEYS[1], 'epoch', 'cancel')
if ARGV[1] ~= '' and fence[1] ~= ARGV[1] then return {'stale', fence[1] or ''} end
local cancel = fence[2] or ''
"""


def fenced(body: str) -> str:
    """A Lua script that runs ``body`` under the epoch fence (see :data:`FENCE`).

    ``body`` sees ``KEYS[1]`` (the run record), ``ARGV[1]`` (the epoch) and ``cancel``; its
    own keys start at ``KEYS[2]`` and its own arguments at ``ARGV[2]``.
    """
    return FENCE + body


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


@dataclass(frozen=True, slots=True)
class Fence:
    """One writer's fence on one run: ``epoch`` None is a writer bound to no run (unfenced).

    Pure (no I/O), so it serves a synchronous and an asynchronous client alike: build the
    script with :func:`fenced`, call it with :meth:`keys` and :meth:`args`, and pass the
    reply to :meth:`check`.
    """

    run: RunKeys
    epoch: int | None = None

    @classmethod
    def of(cls, namespace: str, run_id: str, epoch: int | None = None) -> Fence:
        """The fence of ``run_id`` in ``namespace``."""
        return cls(RunKeys(namespace, run_id), epoch)

    def keys(self, *own: str) -> list[str]:
        """``KEYS`` of a fenced script: the run record, then the script's own keys."""
        return [self.run.record, *own]

    def args(self, *own: Any) -> list[Any]:
        """``ARGV`` of a fenced script: the epoch, then the script's own arguments."""
        return ["" if self.epoch is None else str(self.epoch), *own]

    def check(self, reply: Any, *, lost: str = "") -> Any:
        """``reply`` of a fenced script, or :class:`LeaseLost` when the fence refused it.

        ``lost`` is added to the error message (what was not written).
        """
        if _text(reply[0]) == "stale":
            raise stale_error(self.run.run_id, self.epoch, _text(reply[1]), lost)
        return reply


def stale_error(run_id: str, epoch: object, current: str, lost: str = "") -> LeaseLost:
    """The :class:`LeaseLost` of a write the fence refused (``current``: the owner's epoch)."""
    tail = f"; {lost}" if lost else ""
    return LeaseLost(
        f"run {run_id!r}: epoch {epoch} no longer owns the run "
        f"(current epoch {current or 'none'}){tail}"
    )
