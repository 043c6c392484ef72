"""A worker's build: its id, the build lanes it pulls, and whether it takes new runs.

Routing, not trial and error (docs/deploys.md#builds-and-routing): a run's resume requests
go to its build's lane (``<lane>=<build>``), which only workers of a compatible build pull;
new runs (the plain lane) are pulled only by workers of the newest active build that is
alive. A request that reaches a worker of an incompatible build anyway (published by an
older process to the plain lane) is re-published to the run's build lane, never run here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stalwart.builds import (
    BuildEntry,
    BuildRegistry,
    compatible,
    compatible_builds,
    derive_build,
    routing_lane,
    split_lane,
)
from stalwart.builds._compat import declare_app
from stalwart.builds._registry import newest

if TYPE_CHECKING:
    from nats.aio.msg import Msg

    from stalwart.actors._app import App
    from stalwart.broker import Broker
    from stalwart.checkpoints import CheckpointStore
    from stalwart.config import Settings


class WorkerBuilds:
    """The build side of one worker (see the module docstring)."""

    def __init__(self, app: App, settings: Settings) -> None:
        self.build = settings.build or derive_build(
            (name, spec.fn) for name, spec in app.agents.items()
        )
        self.agents = set(app.agents)
        declare_app(app, self.build)  # App(compatible_with=[...])
        self.takes_new = True
        """Whether this worker pulls new runs (its build is the newest active one alive)."""
        self.resumes: set[str] = {self.build} | compatible_builds(self.build)
        """Builds whose lanes this worker pulls: its own, declared compatible ones, and
        those an operator retired with ``--force`` onto this build."""
        self.state = "active"
        self._registry: BuildRegistry | None = None

    async def start(self, store: CheckpointStore, namespace: str) -> None:
        """Register this build (first seen now, unless known)."""
        self._registry = BuildRegistry(store.redis, namespace)
        await self._registry.register(self.build)

    async def refresh(self, serving: bool, max_age: float) -> set[str]:
        """Say this build is served (when ``serving``: not draining), re-read the registry
        and which builds are alive (seen within ``max_age`` s); return builds newly resumed
        here (whose lanes the worker must start pulling)."""
        assert self._registry is not None
        if serving:
            await self._registry.seen(self.build, sorted(self.agents))
        entries: dict[str, BuildEntry] = await self._registry.entries()
        mine = entries.get(self.build)
        self.state = mine.state if mine is not None else "active"
        # Only builds serving one of this worker's agents count: another app's deploy in
        # the namespace must not stop this one taking new runs.
        alive = await self._registry.live(max_age)
        live = {b for b, agents in alive.items() if agents & self.agents}
        best = newest(entries, live | {self.build})
        self.takes_new = self.state == "active" and best in ("", self.build)
        moved = {b for b, e in entries.items() if e.state == "retired" and e.moved_to == self.build}
        added = (compatible_builds(self.build) | moved) - self.resumes
        self.resumes |= added
        return added

    def may_resume(self, run_build: str) -> bool:
        """Whether this worker may host a run started by ``run_build``."""
        return compatible(run_build, self.build) or run_build in self.resumes

    async def run_build(self, store: CheckpointStore, run_id: str) -> str:
        """The build recorded on ``run_id``'s record ("" for none yet)."""
        return await store.record_field(run_id, "build")

    async def stamp(self, store: CheckpointStore, run_id: str, known: str) -> str:
        """The run's build after its claim here: ``known`` (read before the claim) when it
        had one, else this build, recorded unless another placement raced it there (the
        first placement's build wins, atomically)."""
        if known:
            return known
        if await store.set_record_field_once(run_id, "build", self.build):
            return self.build
        return await self.run_build(store, run_id)

    async def reroute(self, broker: Broker, agent: str, msg: Msg, run_build: str) -> None:
        """Send a request for a run of another build to that build's lane (and drop it
        here): the run waits there for a worker of its build."""
        lane = split_lane(broker.names.agent_lane(msg.subject)[1])[0]
        headers: dict[str, Any] = dict(getattr(msg, "headers", None) or {})
        msg_id = str(headers.get("Nats-Msg-Id", "")) or "request"
        headers["Nats-Msg-Id"] = f"{msg_id}={run_build}"
        subject = broker.names.runs_subject(agent, routing_lane(lane, run_build))
        await broker.js.publish(subject, msg.data, headers=headers)
        await msg.ack()
