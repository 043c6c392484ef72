"""``stalwart builds``: each build, its workers and its runs in flight; drain and retire."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from stalwart.builds._registry import BuildEntry, BuildRegistry, newest

if TYPE_CHECKING:
    from stalwart.client import Client

_SHOWN_RUNS = 20


class BuildView(msgspec.Struct, kw_only=True):
    """One build as ``stalwart builds`` shows it."""

    build: str
    """The build id ("" for runs started before builds)."""
    state: str = "active"
    """``active``, ``draining`` (no new runs), ``retired``; ``unregistered`` for "" runs."""
    first_seen: float = 0.0
    moved_to: str = ""
    """For a build retired with ``--force``: the build that resumes its runs."""
    workers: list[str] = []
    """Live workers of this build."""
    new_runs: bool = False
    """A live worker of this build takes new runs."""
    in_flight: int = 0
    """Runs started by this build that have not ended."""
    runs: list[str] = []
    """Up to 20 of those runs."""
    awaiting: bool = False
    """Runs in flight and no live worker that may resume them: they wait for one."""


async def _in_flight(client: Client) -> dict[str, list[str]]:
    store = client.store
    ids = await store.active_runs()
    async with store.redis.pipeline(transaction=False) as pipe:
        for run_id in ids:
            pipe.hget(store.record_key(run_id), "build")
        builds: list[Any] = await pipe.execute()
    out: dict[str, list[str]] = {}
    for run_id, raw in zip(ids, builds, strict=True):
        build = raw.decode() if isinstance(raw, bytes) else ""
        out.setdefault(build, []).append(run_id)
    return out


def registry(client: Client) -> BuildRegistry:
    """The builds registry of ``client``'s namespace."""
    return BuildRegistry(client.store.redis, client.settings.namespace)


async def builds(client: Client) -> list[BuildView]:
    """Every build known to the registry, or with live workers or runs in flight; newest
    first."""
    entries = await registry(client).entries()
    workers = await client.broker.workers()
    runs = await _in_flight(client)
    names = set(entries) | {w.build for w in workers if w.build} | set(runs)
    out: list[BuildView] = []
    for name in names:
        entry = entries.get(name) or BuildEntry(build=name)
        mine = [w for w in workers if w.build == name]
        # Declared compatibility lives in the workers' code: a worker of another build that
        # resumes these runs is not seen here, so "awaiting" may show for them.
        resumers = [w for w in workers if w.build in (name, entry.moved_to)]
        flying = runs.get(name, [])
        out.append(
            BuildView(
                build=name,
                state=entry.state if name in entries or not name else "active",
                first_seen=entry.first_seen,
                moved_to=entry.moved_to,
                workers=sorted(w.worker_id for w in mine),
                new_runs=any(w.new_runs and not w.draining for w in mine),
                in_flight=len(flying),
                runs=flying[:_SHOWN_RUNS],
                awaiting=bool(flying) and bool(name) and not resumers,
            )
        )
    if "" in names:
        out = [v if v.build else msgspec.structs.replace(v, state="unregistered") for v in out]
    return sorted(out, key=lambda v: (-v.first_seen, v.build))


class Refused(Exception):
    """An operator action that was refused, with the reason."""


async def drain(client: Client, build: str) -> BuildEntry:
    """Mark ``build`` draining: no new runs go to it (its runs in flight go on)."""
    entries = await registry(client).entries()
    if build not in entries:
        raise Refused(f"unknown build {build!r}: known builds are {sorted(entries) or 'none'}")
    return await registry(client).mark(build, "draining")


async def retire(client: Client, build: str, *, force: bool = False) -> BuildEntry:
    """Mark ``build`` retired. Refused while runs of it are in flight, unless ``force``:
    then the newest active build alive resumes them (they may fail to replay on its code)."""
    reg = registry(client)
    entries = await reg.entries()
    if build not in entries:
        raise Refused(f"unknown build {build!r}: known builds are {sorted(entries) or 'none'}")
    flying = (await _in_flight(client)).get(build, [])
    if not flying:
        return await reg.mark(build, "retired")
    if not force:
        raise Refused(
            f"build {build!r} has {len(flying)} run(s) in flight (e.g. {', '.join(flying[:3])}): "
            "wait for them to end, or pass --force to let the newest build resume them"
        )
    live = {w.build for w in await client.broker.workers() if not w.draining}
    target = newest({b: e for b, e in entries.items() if b != build}, live)
    if not target:
        raise Refused(f"no other active build has live workers to resume the runs of {build!r}")
    return await reg.mark(build, "retired", moved_to=target)
