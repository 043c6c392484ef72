"""Where in a durable run the current task is: the runner's root, an agent run, a tool body.

PydanticAI calls the operation backend from its own tasks, with no handle on the Stalwart
run. A context variable carries it: set by the runner around ``agent.run``, by the
capability's ``wrap_run`` for every agent run (the run lifecycle hands it to the run's
tasks), and by a tool step around its body, so an agent run from a tool nests under it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from stalwart.errors import StepFailed
from stalwart.kit import ScopeVar

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from stalwart.actors import RunContext, StepSpec

Nested = list[list[str]]
"""Steps journaled inside a tool step's body, as ``[key, kind, name, fp]``."""


@dataclass(eq=False)
class Frame:
    """One level of a run. ``ctx``'s scope prefixes every step key made in this frame.

    Counters live on the frame of each agent run, so two delegated runs going on at once do
    not share a sequence; nested scope names are counted once per Stalwart run (``scopes``).
    """

    kind: Literal["root", "run", "tool"]
    root: RunContext
    ctx: RunContext
    path: str = ""
    """``root``/``run``: the scope of this frame's keys; ``tool``: the tool step's key."""
    scopes: dict[str, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    claimed: bool = False
    """``root`` only: the runner's own agent run has started (and took the top scope)."""
    collectors: tuple[Nested, ...] = ()
    """One list per enclosing tool step: every step journaled in this frame goes into each."""

    def next(self, base: str) -> int:
        """The n-th ``base`` in this frame (for calls that are sequential, like model requests)."""
        n = self.counts.get(base, 0) + 1
        self.counts[base] = n
        return n

    def nested_run(self, agent_name: str) -> Frame:
        """The frame of an agent run that starts in this frame."""
        if self.kind == "root" and not self.claimed:
            self.claimed = True  # the runner's agent: keys model:1, tool:<id> at the top
            return Frame("run", self.root, self.root, "", self.scopes)
        name = f"{self.path}/{agent_name}" if self.kind == "tool" else f"{self.path}{agent_name}"
        n = self.scopes.get(name, 0) + 1
        self.scopes[name] = n
        unique = name if n == 1 else f"{name}#{n}"
        # `unique` is new to the root context, so `scoped` adds no suffix: keys `<unique>/...`.
        ctx = self.root.scoped(unique)
        return Frame("run", self.root, ctx, f"{unique}/", self.scopes, collectors=self.collectors)

    def in_tool(self, key: str, nested: Nested) -> Frame:
        """The frame of tool step ``key``'s body; its nested steps are listed in ``nested``."""
        return Frame(
            "tool", self.root, self.ctx, key, self.scopes, collectors=(*self.collectors, nested)
        )

    def record(self, spec: StepSpec) -> None:
        """Note a step journaled in this frame in every enclosing tool step."""
        for nested in self.collectors:
            nested.append([spec.key, spec.kind, spec.name, spec.fp])


FRAME: ScopeVar[Frame] = ScopeVar("stalwart_pydantic_ai_frame")
"""The frame of this task, or None outside a durable run."""


def root(ctx: RunContext) -> Frame:
    """The frame the runner opens around its agent's run."""
    return Frame("root", ctx, ctx)


async def journaled(frame: Frame, spec: StepSpec, body: Callable[[], Awaitable[Any]]) -> Any:
    """``ctx.call``, noting the step in the tool steps this frame is nested in."""
    try:
        result = await frame.ctx.call(spec, body)
    except StepFailed:
        frame.record(spec)  # journaled as a failure: still nested in the tool step
        raise
    frame.record(spec)
    return result
