"""``DurableAgentRunner``: a Strands agent, graph or swarm served durably by Stalwart workers."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from strands import Agent
from strands.middleware import ExecuteToolStage, InvokeModelStage
from strands.multiagent import MultiAgentBase, MultiAgentResult, Swarm
from strands.multiagent.graph import Graph, GraphEdge
from strands.types.agent import Limits

from stalwart.adapters._base import DurableRunner
from stalwart.adapters.strands._middleware import model_middleware, tool_middleware
from stalwart.adapters.strands._scope import RunScope, enter, leave
from stalwart.errors import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from strands.agent import AgentResult
    from strands.middleware import ExecuteToolContext
    from strands.types._snapshot import Snapshot

    from stalwart.actors import App, RunContext
    from stalwart.client import Client
    from stalwart.policies import Policies

Target = Agent | MultiAgentBase
"""What a runner serves: an ``Agent``, a ``Graph`` or a ``Swarm`` (nested ones included)."""

_MARK = "_stalwart_scope"
_SWARM_TOOLS = ("handoff_to_agent",)


def instrument(target: Target, *, local_tools: Iterable[str] = ()) -> None:
    """Add the durable model and tool middleware to every agent of ``target``.

    A lone agent's keys have no prefix (``model:1``, ``tool:<id>``); the agent of a graph or
    swarm node lives under ``<node_id>/``, a nested graph's under ``<outer>/<inner>/``. So a
    resumed graph replays each completed node's calls from the journal and goes live at the
    first call that had not completed. Instrumenting the same object twice is a no-op.

    Tools named in ``local_tools`` are not journaled and run again on every replay: for
    tools whose only effect is on in-process state (``agent.state``, a swarm's shared
    context) that a resumed run must rebuild. A swarm's ``handoff_to_agent`` and Strands'
    structured output tool are always treated so.
    """
    _instrument(target, "", frozenset(local_tools))


def _instrument(target: Target, prefix: str, names: frozenset[str]) -> None:
    if isinstance(target, Agent):
        _instrument_agent(target, prefix, names, ())
    elif isinstance(target, Graph):
        if not isinstance(target.edges, _OrderedEdges):
            target.edges = _OrderedEdges(target.edges)
        for node_id, node in target.nodes.items():
            executor = node.executor
            if not isinstance(executor, Agent | MultiAgentBase):
                raise ConfigurationError(
                    f"graph node {node_id!r} runs a {type(executor).__name__}, whose model and "
                    "tool calls Stalwart cannot journal; use a strands Agent, Graph or Swarm"
                )
            _instrument(executor, f"{prefix}{node_id}/", names)
    elif isinstance(target, Swarm):
        for node_id, swarm_node in target.nodes.items():
            agent = swarm_node.executor
            registry = agent.tool_registry.registry
            own = tuple(registry[name] for name in _SWARM_TOOLS if name in registry)
            _instrument_agent(agent, f"{prefix}{node_id}/", names, own)
    else:
        raise ConfigurationError(
            f"cannot make a {type(target).__name__} durable; give a strands Agent, Graph or Swarm"
        )


class _OrderedEdges(set[GraphEdge]):
    """A graph's edge set that iterates in a fixed order (by source, then target node id).

    A node with several dependencies gets their outputs in the order ``Graph`` iterates its
    edge set, and a set of edges hashed by node-id strings iterates in a different order in
    every process (string hashing is salted per process). A run resumed on another worker
    would then send that node a differently ordered prompt than the one journaled.
    """

    def __iter__(self) -> Iterator[GraphEdge]:
        edges = list(super().__iter__())
        edges.sort(key=lambda e: (e.from_node.node_id, e.to_node.node_id))
        return iter(edges)


def _instrument_agent(
    agent: Agent, prefix: str, names: frozenset[str], own: tuple[object, ...]
) -> None:
    seen = getattr(agent, _MARK, None)
    if seen == prefix:
        return
    if seen is not None:
        raise ConfigurationError(
            f"agent {agent.name!r} is used both as {seen or 'the top agent'!r} and as "
            f"{prefix or 'the top agent'!r}; give each node its own Agent object"
        )
    if getattr(agent, "_background_tasks", None) is not None:
        raise ConfigurationError(
            f"agent {agent.name!r} runs tools in the background (background_tasks=...), which "
            "Stalwart cannot journal yet; turn background tasks off for durable runs"
        )
    agent.add_middleware(InvokeModelStage, model_middleware(prefix))

    def local(context: ExecuteToolContext) -> bool:
        return context.tool_use["name"] in names or any(context.tool is t for t in own)

    agent.add_middleware(ExecuteToolStage, tool_middleware(prefix, local))
    setattr(agent, _MARK, prefix)


class _Resettable:
    """A target given as an instance: shared by the runs of this worker, one at a time.

    Each run starts from the state the target had when the runner was built (conversation,
    agent state, a swarm's shared context), as a fresh object from a factory would.
    """

    def __init__(self, target: Target) -> None:
        self.target = target
        self.lock = asyncio.Lock()
        self._snapshots: dict[int, Snapshot] = {}
        self._capture(target)

    def _capture(self, target: Target) -> None:
        if isinstance(target, Agent):
            self._snapshots[id(target)] = target.take_snapshot(
                include=["messages", "state", "conversation_manager_state", "model_state"]
            )
        elif isinstance(target, Graph):
            for node in target.nodes.values():
                if isinstance(node.executor, MultiAgentBase):
                    self._capture(node.executor)

    def reset(self, target: Target | None = None) -> None:
        target = self.target if target is None else target
        if isinstance(target, Agent):
            target.load_snapshot(self._snapshots[id(target)])
        elif isinstance(target, Graph):
            for node in target.nodes.values():
                node.reset_executor_state()
                if isinstance(node.executor, MultiAgentBase):
                    self.reset(node.executor)
        elif isinstance(target, Swarm):
            for swarm_node in target.nodes.values():
                swarm_node.reset_executor_state()
            target.shared_context.context = {}


class DurableAgentRunner(DurableRunner):
    """Serves a Strands agent, graph or swarm as the Stalwart agent ``name``.

    The framework keeps its own loop: ``Agent.invoke_async`` or the graph's / swarm's
    ``invoke_async``. Every agent in it gets two middleware handlers that turn each model call
    and each tool call into a durable step, so a worker that resumes the run after a crash
    runs the loop again from the top, fed from the journal, and goes live at the first call
    that had not completed. Parallel tool calls (Strands' concurrent executor) are keyed by
    their ``toolUseId``; graph and swarm nodes each have their own scope, so completed nodes
    replay instantly and the run resumes at the node that was running.

    ``agent`` is a zero-argument callable that builds the agent, graph or swarm (called once
    per run: recommended, runs of one worker then run side by side), or the object itself
    (its runs in a worker then take turns, each starting from the state it had here).
    ``max_iterations`` caps a lone agent's turns (``Limits(turns=...)``). Tools named in
    ``local_tools`` are not journaled but run again on every replay, for tools whose only
    effect is on in-process state a resumed run must rebuild (see :func:`instrument`).

    The run's input is a prompt string or a list of content blocks. Its result is plain
    data: for an agent, its structured output as a dict if it has one, else the final
    message's text; for a graph or swarm, ``{"status", "order", "outputs"}`` (the node ids in
    the order they ran, and each node's final text).
    """

    def __init__(
        self,
        name: str,
        agent: Target | Callable[[], Target],
        *,
        max_iterations: int | None = None,
        local_tools: Iterable[str] = (),
        app: App | None = None,
        client: Client | None = None,
        policies: Policies | None = None,
    ) -> None:
        if max_iterations is not None and max_iterations < 1:
            raise ConfigurationError(f"max_iterations must be at least 1, got {max_iterations}")
        self.max_iterations = max_iterations
        self.local_tools = frozenset(local_tools)
        self._factory: Callable[[], Target] | None = None
        self._shared: _Resettable | None = None
        if isinstance(agent, Agent | MultiAgentBase):
            instrument(agent, local_tools=self.local_tools)
            self._check_limits(agent)
            self._shared = _Resettable(agent)
        elif callable(agent):
            self._factory = agent
        else:
            raise ConfigurationError(
                f"agent must be a strands Agent, Graph or Swarm, or a function building one; "
                f"got {type(agent).__name__}"
            )
        super().__init__(name, app=app, client=client, policies=policies)

    def _check_limits(self, target: Target) -> None:
        if self.max_iterations is not None and not isinstance(target, Agent):
            raise ConfigurationError(
                "max_iterations applies to a lone Agent; a Graph has max_node_executions and a "
                "Swarm max_iterations of their own"
            )

    async def execute(self, ctx: RunContext, input: Any) -> Any:
        """Run the framework's own loop inside the Stalwart run; return its result as plain data."""
        prompt = _prompt(self.name, input)
        run = RunScope(ctx)
        token = enter(run)
        try:
            if self._factory is not None:
                target = self._factory()
                instrument(target, local_tools=self.local_tools)
                self._check_limits(target)
                result = await self._invoke(target, prompt)
            else:
                assert self._shared is not None
                async with self._shared.lock:
                    self._shared.reset()
                    result = await self._invoke(self._shared.target, prompt)
        except Exception as exc:
            # Strands may wrap or swallow what a step raised; the run-level stop wins.
            if run.fatal is not None and run.fatal is not exc:
                raise run.fatal from exc
            raise
        finally:
            leave(token)
        if run.fatal is not None:
            raise run.fatal
        return result

    async def _invoke(self, target: Target, prompt: Any) -> Any:
        if isinstance(target, Agent):
            limits = Limits(turns=self.max_iterations) if self.max_iterations else None
            agent_result = await target.invoke_async(prompt, limits=limits)
            _refuse_interrupts(self.name, agent_result.stop_reason)
            return agent_output(agent_result)
        multi = await target.invoke_async(prompt)
        _refuse_interrupts(self.name, "interrupt" if multi.interrupts else "")
        return multi_output(multi)


def _prompt(name: str, input: Any) -> Any:
    if isinstance(input, str) or (
        isinstance(input, list) and all(isinstance(item, dict) for item in input)
    ):
        return input
    raise TypeError(
        f"agent {name!r} takes a prompt string or a list of content blocks, "
        f"not {type(input).__name__}"
    )


def _refuse_interrupts(name: str, stop_reason: str) -> None:
    if stop_reason == "interrupt":
        raise ConfigurationError(
            f"agent {name!r} stopped on a Strands interrupt; interrupts are not supported in "
            "durable runs yet (wait for a human with RunContext.wait_for_signal instead)"
        )


def agent_output(result: AgentResult) -> Any:
    """An agent's result as plain data: its structured output, else its final text."""
    if result.structured_output is not None:
        return result.structured_output.model_dump(mode="json")
    return str(result).strip()


def multi_output(result: MultiAgentResult) -> dict[str, Any]:
    """A graph's or swarm's result as plain data."""
    order = getattr(result, "execution_order", None) or getattr(result, "node_history", None) or []
    return {
        "status": result.status.value,
        "order": [node.node_id for node in order],
        "outputs": {node_id: str(r).strip() for node_id, r in result.results.items()},
    }
