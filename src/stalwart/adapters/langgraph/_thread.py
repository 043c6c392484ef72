"""A LangGraph thread of the user's own (``config={"configurable": {"thread_id": ...}}``).

A durable run keeps its graph's checkpoints on a thread: its run id by default, or a thread
the caller names, so a second run on the thread starts from the first one's state (memory
across runs, as with any LangGraph checkpointer). Runs on one thread must not overlap, or
two graphs would write one history; so a run claims the thread (a small owner record in the
thread's hash slot) before its graph starts, and while another unfinished run holds it the
new run is refused with :class:`ThreadBusy`; once the holder's record says it ended, the
next run takes the thread over. The claim also fences the run's checkpoint
writes: they carry ``<run id>/<epoch>``, and a worker that lost the run (an older epoch) or
a run that lost the thread is refused with :class:`~stalwart.LeaseLost`, as on a run's own
thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stalwart.adapters.langgraph import _codec
from stalwart.checkpoints import TERMINAL_STATUSES, RunKeys
from stalwart.errors import LeaseLost, NonRetryableError

if TYPE_CHECKING:
    import redis.asyncio as aioredis

# Take the thread for a run (ARGV: run id, fence token, epoch, a run id the caller found
# finished or ''). Another unfinished run's claim wins; an older epoch of the same run (a
# zombie starting late) may not take it back.
CLAIM = """
local cur = redis.call('HMGET', KEYS[1], 'run', 'n')
if cur[1] and cur[1] ~= ARGV[1] and cur[1] ~= ARGV[4] then return {'busy', cur[1]} end
if cur[1] == ARGV[1] and tonumber(cur[2] or '0') > tonumber(ARGV[3]) then
  return {'stale', cur[2]}
end
redis.call('HSET', KEYS[1], 'run', ARGV[1], 'n', ARGV[3], 'epoch', ARGV[2])
return {'ok', ''}
"""

# Say which interrupts the run waits on (ARGV[2], comma-separated; '' when none), if the
# claim is still this owner's: a client resuming the thread with Command(resume=...) reads it.
WAITING = """
if redis.call('HGET', KEYS[1], 'epoch') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'waiting', ARGV[2])
end
return 1
"""


class ThreadBusy(NonRetryableError):
    """Another unfinished durable run holds the LangGraph thread this run was given."""

    def __init__(self, thread_id: str, run_id: str, other: str, status: str) -> None:
        super().__init__(
            f"run {run_id!r}: LangGraph thread {thread_id!r} is in use by run {other!r} "
            f"({status or 'starting'}). Runs on one thread must not overlap (they would write "
            "one history): wait for that run to end (runner.result(...)), or answer the "
            "interrupt it waits on, then submit again; or use another thread_id."
        )
        self.thread_id = thread_id
        self.other_run = other


@dataclass(frozen=True, slots=True)
class ThreadFence:
    """The fence of a run's writes to a thread of the user's (duck-types ``Fence``)."""

    namespace: str
    thread_id: str
    run_id: str
    epoch: int

    @property
    def token(self) -> str:
        return f"{self.run_id}/{self.epoch}"

    @property
    def owner_key(self) -> str:
        return _codec.Keys(self.namespace, self.thread_id).owner

    def keys(self, *own: str) -> list[str]:
        return [self.owner_key, *own]

    def args(self, *own: Any) -> list[Any]:
        return [self.token, *own]

    def check(self, reply: Any, *, lost: str = "") -> Any:
        # The saver's scripts are fenced by stalwart.checkpoints.FENCE, whose KEYS[1] is
        # this owner record and whose 'epoch' field holds the token.
        if _text(reply[0]) == "stale":
            raise self._lost(_text(reply[1]), lost)
        return reply

    def _lost(self, current: str, what: str) -> LeaseLost:
        return LeaseLost(
            f"run {self.run_id!r}: epoch {self.epoch} no longer owns LangGraph thread "
            f"{self.thread_id!r} (its owner is now {current or 'nobody'}); {what}"
        )

    async def claim(self, redis: aioredis.Redis) -> None:
        """Take the thread for this run; :class:`ThreadBusy` while another run holds it."""
        finished = ""
        while True:
            reply = await redis.eval(
                CLAIM, 1, self.owner_key, self.run_id, self.token, str(self.epoch), finished
            )
            outcome, other = _text(reply[0]), _text(reply[1])
            if outcome == "ok":
                return
            if outcome == "stale":
                raise self._lost(f"epoch {other}", "the thread was not claimed")
            # Another run holds it: free for the taking only if that run has ended (its
            # worker may have died before giving the thread back).
            status = _text(await redis.hget(RunKeys(self.namespace, other).record, "status"))
            if other == finished or (status and status not in TERMINAL_STATUSES):
                raise ThreadBusy(self.thread_id, self.run_id, other, status)
            finished = other

    async def waiting(self, redis: aioredis.Redis, interrupt_ids: list[str]) -> None:
        """Record the interrupts the run waits on now (none: ``[]``)."""
        await redis.eval(WAITING, 1, self.owner_key, self.token, ",".join(interrupt_ids))


async def waiting_run(
    redis: aioredis.Redis, namespace: str, thread_id: str
) -> tuple[str, list[str]] | None:
    """The run holding ``thread_id`` and the interrupts it waits on, if it waits on any."""
    run, waiting = await redis.hmget(_codec.Keys(namespace, thread_id).owner, ["run", "waiting"])
    ids = [i for i in _text(waiting).split(",") if i]
    if not (run and ids):
        return None
    status = _text(await redis.hget(RunKeys(namespace, _text(run)).record, "status"))
    return None if status in TERMINAL_STATUSES else (_text(run), ids)  # ended: not waiting


def _text(raw: Any) -> str:
    if raw is None:
        return ""
    return raw.decode() if isinstance(raw, bytes) else str(raw)
