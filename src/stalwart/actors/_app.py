"""The agent registry: ``App`` and the ``@app.agent`` decorator."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from stalwart._ids import check_agent_name
from stalwart.actors._compat import check_builds
from stalwart.errors import ConfigurationError, UnknownAgentError
from stalwart.flow import check_rules
from stalwart.policies import Policies

if TYPE_CHECKING:
    from stalwart.actors._context import RunContext
    from stalwart.flow import FlowRule

AgentFn = Callable[["RunContext", Any], Awaitable[Any]]
F = TypeVar("F", bound=AgentFn)


@dataclass(frozen=True, slots=True)
class AgentSpec:
    """A registered agent: its name, its function and the type its input is converted to."""

    name: str
    fn: AgentFn
    input_type: Any = Any
    result_type: Any = Any
    policies: Policies = field(default_factory=Policies)


def _io_types(fn: AgentFn) -> tuple[Any, Any]:
    params = list(inspect.signature(fn).parameters.values())
    if len(params) != 2:
        raise ConfigurationError(
            f"agent {getattr(fn, '__qualname__', fn)!r} must take (ctx, input): it takes "
            f"{len(params)} parameter(s)"
        )
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references: fall back to untyped input
        hints = {}
    return hints.get(params[1].name, Any), hints.get("return", Any)


class App:
    """A named set of agents that ``stalwart worker module:app`` serves."""

    def __init__(
        self,
        name: str = "stalwart",
        *,
        policies: Policies | None = None,
        flow: Sequence[FlowRule] = (),
        compatible_with: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.policies = policies or Policies()
        """Default failure handling for the app's agents (retries, timeouts, limits)."""
        self.flow: tuple[FlowRule, ...] = check_rules(flow)
        """Flow rules shared by every worker of the app (rate limits, spend limits ...)."""
        self.compatible_with: tuple[str, ...] = check_builds(compatible_with)
        """Older builds whose runs this app's workers may resume (their journals replay on
        this code, e.g. behind ``ctx.patched``); see :mod:`stalwart.builds._compat`."""
        self.agents: dict[str, AgentSpec] = {}

    def agent(
        self, name: str | None = None, *, policies: Policies | None = None
    ) -> Callable[[F], F]:
        """Register an ``async def agent(ctx, input)`` under ``name`` (default: its name).

        The input is converted to the annotated type of the second parameter (a msgspec
        Struct, dataclass, TypedDict, ``dict``...) before the agent runs; a mismatch fails
        the run with a clear error instead of reaching the agent.
        """

        def decorate(fn: F) -> F:
            self.register(name or fn.__name__, fn, policies=policies)
            return fn

        return decorate

    def register(self, name: str, fn: AgentFn, *, policies: Policies | None = None) -> AgentSpec:
        """Register ``fn`` as agent ``name`` (the non-decorator form)."""
        check_agent_name(name)
        if not inspect.iscoroutinefunction(fn):
            raise ConfigurationError(f"agent {name!r} must be an async function")
        if name in self.agents:
            raise ConfigurationError(f"agent {name!r} is registered twice in app {self.name!r}")
        input_type, result_type = _io_types(fn)
        spec = AgentSpec(
            name=name,
            fn=fn,
            input_type=input_type,
            result_type=result_type,
            policies=policies or self.policies,
        )
        self.agents[name] = spec
        return spec

    def get(self, name: str) -> AgentSpec:
        """The agent registered as ``name``; :class:`UnknownAgentError` lists the others."""
        try:
            return self.agents[name]
        except KeyError:
            known = ", ".join(sorted(self.agents)) or "none"
            raise UnknownAgentError(
                f"app {self.name!r} has no agent {name!r} (registered: {known})"
            ) from None
