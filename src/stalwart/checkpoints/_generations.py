"""Lease-bucket generations: which instance of the lease bucket is the newest, kept in Redis.

A claim is ordered by the claimant's lease position, ``(generation, revision)`` (see
``_scripts.CLAIM``). Revisions only grow within one instance of the lease bucket; a new NATS,
a recreated bucket or one restored from a backup starts them again from wherever it starts.
The generation tells those instances apart and orders them: every instance has an identity
(the worker reads it from NATS, e.g. the bucket stream's creation time), and Redis numbers
identities in the order it first sees them, so a bucket first used after another one gets a
higher generation and its claims win over any claim made under the older one.

One hash per namespace, ``<ns>:lease_generations``: ``identity -> generation``, plus the
counter under ``#last``. It is outside every run's slot, so it is read in its own round trip
(once per worker, and again only after a claim was refused), never inside a claim.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis.asyncio as aioredis

_COUNTER = "#last"

# ARGV: identity. The identity's generation, numbered now if Redis never saw it.
_NUMBER = """
local n = redis.call('HGET', KEYS[1], ARGV[1])
if n then return tonumber(n) end
n = tonumber(redis.call('HGET', KEYS[1], '#last') or '0') + 1
redis.call('HSET', KEYS[1], '#last', n, ARGV[1], n)
return n
"""

# ARGV: identity, the generation the caller found stale. Renumber the identity as the newest
# unless someone did already (then answer theirs): many workers that find the same stale
# generation at once renumber it once.
_RENUMBER = """
local n = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if n ~= tonumber(ARGV[2]) then return n end
n = tonumber(redis.call('HGET', KEYS[1], '#last') or '0') + 1
redis.call('HSET', KEYS[1], '#last', n, ARGV[1], n)
return n
"""


def generations_key(namespace: str) -> str:
    """The hash that numbers the namespace's lease-bucket instances."""
    return f"{namespace}:lease_generations"


def _check_identity(identity: str) -> None:
    if not identity or identity == _COUNTER:
        raise ValueError(f"{identity!r} is not a lease bucket identity")


async def generation_of(redis: aioredis.Redis, namespace: str, identity: str) -> int:
    """The generation of the lease bucket instance ``identity`` (numbered on first sight)."""
    _check_identity(identity)
    # A registered script (EVALSHA, loaded on first use): the worker's ACL role has no EVAL.
    number = redis.register_script(_NUMBER)
    reply = await number(keys=[generations_key(namespace)], args=[identity])
    return int(reply)


async def renumber(redis: aioredis.Redis, namespace: str, identity: str, stale: int) -> int:
    """Make ``identity`` the newest generation, unless it no longer is ``stale``.

    For a bucket that went back in time under the same identity (restored from a backup):
    its revisions are below the ones recorded under its generation, so its claims would all
    be refused. Returns the identity's generation after the call.
    """
    _check_identity(identity)
    again = redis.register_script(_RENUMBER)
    reply = await again(keys=[generations_key(namespace)], args=[identity, str(stale)])
    return int(reply)


async def newest_generation(redis: aioredis.Redis, namespace: str) -> int:
    """The highest generation numbered so far in ``namespace`` (0: none)."""
    raw = await redis.hget(generations_key(namespace), _COUNTER)
    return int(raw or 0)
