"""The Redis ACL rules of each role, for one namespace (Redis 7: ``%R~``/``%W~`` key patterns).

Every key of a namespace starts with ``<ns>:`` (see ``checkpoints/_keys``): a run's keys are
``<ns>:{<run_id>}:run`` (record), ``:journal``, ``:signals`` and an adapter's own
``:<suffix>``; the shared ones ``<ns>:runs``, ``<ns>:active``, ``<ns>:timers`` (or their
shards ``<ns>:{idx.<k>}:runs`` ... with ``redis_index_shards`` > 1). Namespaces
match ``[a-z][a-z0-9_]*``, so ``<ns>:*`` never matches another namespace's keys.

Commands run by a Lua script (``EVALSHA``) are checked against the caller's rules one by one,
keys included: a script gives no rights the user does not have.
"""

from __future__ import annotations

import re

from stalwart._ids import check_namespace
from stalwart.roles._nats import ROLES, RoleName

_CONNECT = ["+ping", "+hello", "+auth", "+select", "+client|setname"]
"""What every connection sends: the handshake, and ``SELECT`` for a database number. Not
``CLIENT SETINFO``: Redis 7.0 does not know it (``ACL SETUSER`` would fail), and redis-py
ignores its refusal on 7.2+."""
_CLUSTER = ["+cluster|info", "+cluster|slots", "+command", "+asking"]
"""What a cluster client sends besides the commands of its role: the test that tells a
cluster node from a single Redis, the slot map, the command table redis-py reads at connect
(key positions), and ``ASKING`` before a command on a slot being migrated. A single Redis
never gets them (``CLUSTER INFO`` is refused there, which is the answer)."""
_SCRIPTS = ["+script|load", "+evalsha"]
"""The journal scripts: loaded at connect, run by SHA."""
_READ = [
    "+hget",
    "+hmget",
    "+hgetall",
    "+exists",
    "+type",
    "+xrange",
    "+xrevrange",
    "+xlen",
    "+zrange",
    "+zrevrange",
    "+zrangebyscore",
    "+zrevrangebyscore",
    "+zscore",
    "+smembers",
    "+sismember",
    "+zcount",
    "+get",
]
"""Reading records, journals, signal inboxes and the indexes (and flow rules' state). No SCAN or KEYS: they list
the key names of every namespace."""


def _index(ns: str, *names: str) -> list[str]:
    """The patterns of shared indexes ``names``: the one key and its shards."""
    return [p for name in names for p in (f"{ns}:{name}", f"{ns}:{{idx.*}}:{name}")]


def _writes(role: RoleName, ns: str) -> tuple[list[str], list[str]]:
    """(key patterns it may write, write commands) of ``role``."""
    run = f"{ns}:{{*}}"
    if role == "client":
        # submit (record, indexes), cancel (the cancel flag; a run nobody placed yet is
        # ended with a journal entry), signal (inbox), fork (a new run's record and journal).
        keys = [f"{run}:run", f"{run}:journal", f"{run}:signals", *_index(ns, "runs", "active")]
        return keys, ["+hset", "+xadd", "+zadd", "+sadd", "+srem"]
    if role == "supervisor":
        # dead letters and rejections fail runs (record + journal); timers; the active set.
        keys = [f"{run}:run", f"{run}:journal", *_index(ns, "runs", "active", "timers")]
        return keys, ["+hset", "+xadd", "+zadd", "+zrem", "+sadd", "+srem"]
    if role == "worker":
        # Everything of the runs it hosts, adapters' own keys included (the LangGraph
        # saver's scripts also use HSETNX, RPUSH and ZREVRANGEBYLEX; the builds registry and
        # a run's build are set with HSETNX too: stalwart.builds).
        commands = ["+hset", "+hdel", "+xadd", "+xdel", "+zadd", "+zrem", "+sadd", "+srem"]
        langgraph = ["+hsetnx", "+rpush", "+zrevrangebylex"]
        # Flow rules' windows, spend counters and waiting sets (stalwart.flow._store).
        flow = ["+hincrby", "+hincrbyfloat", "+zcard", "+zremrangebyscore", "+time"]
        return [f"{ns}:*"], [
            *commands,
            *langgraph,
            *flow,
            "+del",
            "+unlink",
            "+pexpire",
            "+expire",
        ]
    if role == "admin":
        commands = ["+hset", "+hdel", "+xadd", "+xdel", "+xtrim", "+zadd", "+zrem", "+sadd"]
        # "+set": an operator's spend limit (``stalwart flow set-limit``).
        return [f"{ns}:*"], [*commands, "+srem", "+del", "+unlink", "+pexpire", "+expire", "+set"]
    return [], []


def redis_acl_rules(role: RoleName, namespace: str) -> list[str]:
    """The ``ACL SETUSER`` rules of ``role`` in ``namespace`` (after ``reset on``)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
    check_namespace(namespace)
    write_keys, write_commands = _writes(role, namespace)
    # Written keys get ``~`` (read and write), not ``%W~``: Redis needs one pattern to grant
    # all a command needs for a key, and counts a script's keys as read *and* written.
    keys = [f"%R~{namespace}:*", *(f"~{k}" for k in write_keys)]
    scripts = _SCRIPTS if role != "viewer" else ["+script|load"]
    return [
        *keys,
        "resetchannels",
        "-@all",
        *_CONNECT,
        *_CLUSTER,
        *scripts,
        *_READ,
        *write_commands,
    ]


_USER = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


def render_redis_acl(
    role: RoleName, namespace: str, user: str, *, password_sha256: str = ""
) -> str:
    """One ``ACL SETUSER`` line creating (or resetting) ``user`` with ``role``'s rules.

    Without ``password_sha256`` (the hex SHA-256 of the password) the user has no password
    yet and cannot log in: add one with ``ACL SETUSER <user> >password``.
    """
    if not _USER.match(user):
        raise ValueError(f"user name {user!r}: use 1-64 of A-Z a-z 0-9 _ . @ -")
    if password_sha256 and not re.fullmatch(r"[0-9a-f]{64}", password_sha256):
        raise ValueError("password_sha256 must be 64 lowercase hex digits (sha256 of it)")
    password = [f"#{password_sha256}"] if password_sha256 else []
    rules = ["reset", "on", *password, *redis_acl_rules(role, namespace)]
    return f"ACL SETUSER {user} {' '.join(rules)}\n"
