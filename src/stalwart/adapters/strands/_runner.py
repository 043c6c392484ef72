"""``DurableAgentRunner``: a Strands agent, graph or swarm served durably by Stalwart workers."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from pydantic_core import to_jsonable_python
from strands import Agent
from strands.agent.state import AgentState
from strands.middleware import ExecuteToolStage, InvokeModelStage
from strands.multiagent import MultiAgentBase, MultiAgentResult, Swarm
from strands.multiagent.graph import Graph, GraphEdge
from strands.types.agent import Limits

from stalwart.adapters.strands import _conversation
from stalwart.adapters.strands._interrupts import wait_for_answers
from stalwart.adapters.strands._model import POLICIES, SCOPE, STREAM, model_middleware
from stalwart.adapters.strands._result import (
    RunRequest,
    decode_request,
    encode_request,
    rebuild_result,
    result_data,
)
from stalwart.adapters.strands._stream import StrandsEvents
from stalwart.adapters.strands._tools import MARK as _MARK
from stalwart.adapters.strands._tools import agent_of_tool, tool_middleware
from stalwart.client import StreamEnd
from stalwart.errors import ConfigurationError
from stalwart.kit import (
    ApprovalPolicy,
    DurableRunner,
    DurableScope,
    allow_map,
    check_max_iterations,
    check_source,
    loaded_class,
    type_path,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterable, Iterator

    from strands.middleware import ExecuteToolContext
    from strands.types._snapshot import Snapshot

    from stalwart import Policies
    from stalwart.actors import App, RunContext
    from stalwart.client import Client, RunHandle

Target = Agent | MultiAgentBase
"""What a runner serves: an ``Agent``, a ``Graph`` or a ``Swarm`` (nested ones included)."""

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
    if getattr(agent, "_session_manager", None) is not None:
        raise ConfigurationError(
            f"agent {agent.name!r} has a session manager: a run resumed after a crash would "
            "restore the conversation the crashed attempt had already advanced and ask the "
            "model something else; pass the conversation per run instead "
            "(runner.run(prompt, messages=previous.messages))"
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
    # An agent used as a tool: its calls are steps of their own, under the calling tool's
    # key (``tool:<id>/model:1``); the tool middleware opens that scope for each call.
    for tool in list(agent.tool_registry.registry.values()):
        inner = agent_of_tool(tool)
        if inner is not None and inner is not agent:
            _instrument_agent(inner, "", names, ())


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
    ``max_iterations`` caps a lone agent's turns (``Limits(turns=...)``; None: no cap).
    ``stream`` (None, the default, is ``True`` here) publishes the models' text deltas live
    as ``model.delta`` events (not journaled). Tools named in ``local_tools`` are not
    journaled but run again on every replay, for tools whose only effect is on in-process
    state a resumed run must rebuild (see :func:`instrument`). ``output_models`` lists the
    pydantic models a run may ask for as ``structured_output_model=`` (the agent's own is
    always known). ``interrupt_timeout`` (seconds) fails a run whose interrupt nobody
    answers in time with ``WaitTimeout``.

    A lone agent's run takes a prompt (string, content blocks or messages) and Strands'
    per-call options as keywords (see :meth:`request`), and returns a
    :class:`DurableAgentResult` (Strands' ``AgentResult`` plus the conversation after the
    run). A Strands interrupt (``tool_context.interrupt(...)``, a hook's
    ``event.interrupt(...)``) pauses the run durably: the run publishes ``agent.interrupted``
    and waits for the signal ``interrupt:<id>`` of each interrupt, whose payload is the
    response; Strands then resumes with the responses, as a caller's own loop would. With
    ``approvals`` (an :class:`~stalwart.kit.ApprovalPolicy`), the interrupts of a tool call
    are approvals bound to the call (its tool and the hash of its input, with an expiry):
    answer them with ``RunHandle.approve`` / ``reject``; the interrupt's response is then
    ``{"approved": bool, "message": str | None, "expired": bool}``. A graph or swarm
    returns ``{"status", "order", "outputs"}``.
    """

    def __init__(
        self,
        name: str,
        agent: Target | Callable[[], Target],
        *,
        max_iterations: int | None = None,
        stream: bool | None = None,
        local_tools: Iterable[str] = (),
        output_models: Iterable[type[BaseModel]] = (),
        interrupt_timeout: float | None = None,
        approvals: ApprovalPolicy | None = None,
        app: App | None = None,
        client: Client | None = None,
        policies: Policies | None = None,
    ) -> None:
        self.max_iterations = check_max_iterations(max_iterations)
        self.stream = True if stream is None else stream
        self.local_tools = frozenset(local_tools)
        self.interrupt_timeout = interrupt_timeout
        self.approvals = approvals
        self._models: dict[str, type[BaseModel]] = allow_map(output_models)
        self._factory: Callable[[], Target] | None = None
        self._shared: _Resettable | None = None
        check_source(agent, (Agent, MultiAgentBase), "strands Agent, Graph or Swarm")
        if isinstance(agent, Agent | MultiAgentBase):
            instrument(agent, local_tools=self.local_tools)
            self._check_limits(agent)
            self._shared = _Resettable(agent)
            self._know(agent)
        else:
            self._factory = agent
        super().__init__(name, app=app, client=client, policies=policies)

    def _check_limits(self, target: Target) -> None:
        if self.max_iterations is not None and not isinstance(target, Agent):
            raise ConfigurationError(
                "max_iterations applies to a lone Agent; a Graph has max_node_executions and a "
                "Swarm max_iterations of their own"
            )

    def _know(self, target: Target) -> None:
        model = getattr(target, "_default_structured_output_model", None)
        if isinstance(model, type) and issubclass(model, BaseModel):
            self._models.setdefault(type_path(model), model)

    # -- per-run inputs and the result ---------------------------------------------------

    def request(self, input: Any, **options: Any) -> Any:
        """The run input for a prompt and Strands' per-call options.

        ``input`` is what ``agent(...)`` takes: a string, content blocks, messages, or None
        (continue ``messages``). Options: ``messages`` (the conversation so far, e.g.
        ``previous.messages``), ``state`` (the agent's state as a dict), ``invocation_state``
        (plain data), ``limits`` (Strands' ``Limits``), ``structured_output_model`` (a class
        in ``output_models``, or the agent's own), ``structured_output_prompt``. They travel
        as plain data; ``cancel_signal`` and ``idempotency_token`` are refused (use
        ``handle.cancel()`` and ``run_id=``).
        """
        model = options.get("structured_output_model")
        if isinstance(model, type) and issubclass(model, BaseModel):
            self._models.setdefault(type_path(model), model)
        return encode_request(input, options)

    def decode_result(self, data: Any) -> Any:
        """A lone agent's :class:`DurableAgentResult`; a graph's or swarm's ``MultiAgentResult``."""
        return rebuild_result(data, _Models(self._models, self._factory))

    # -- streaming: Strands' own ``stream_async``, durable ---------------------------------

    async def stream_async(
        self, prompt: Any = None, *, run_id: str | None = None, **options: Any
    ) -> AsyncIterator[dict[str, Any]]:
        """Submit a run and yield its events as Strands' ``Agent.stream_async`` does.

        Takes what :meth:`run` takes (a prompt, Strands' per-call options, ``run_id=``,
        ``conversation=``...). Yields Strands' event dicts: ``{"data": text, "delta": ...}``
        for each text delta (live, from whichever worker runs the model call), a
        ``tool_use_stream`` event per tool call, ``{"message": ...}`` for each message the
        agent adds, and ``{"result": DurableAgentResult}`` last (a graph or swarm:
        ``{"type": "multiagent_result", "result": MultiAgentResult}``, its nodes' events
        wrapped as ``multiagent_node_stream``). A failed run raises as :meth:`run` does.

        When a worker dies (or a model call is retried) after part of a call's text was
        yielded, ``{"stalwart_reset": StreamReset}`` comes before the call streams again
        from its start: drop the text shown for ``reset.step`` (every text event names its
        step in ``event["stalwart"]["step"]``; in a lone agent, the reset is always of the
        call in flight: the text since the last ``message`` event). See
        ``docs/adapters.md`` (Strands, streaming) for the loop.
        """
        handle = await self.submit(prompt, run_id=run_id, **options)
        async for event in self.attach_async(handle):
            yield event

    async def attach_async(self, run: RunHandle | str) -> AsyncIterator[dict[str, Any]]:
        """:meth:`stream_async`'s events for a run already submitted (a handle or a run id).

        Attached late, the model calls completed before it attached yield their whole text
        once, then the call in flight streams live.
        """
        handle = run if not isinstance(run, str) else (await self.client()).handle(run, self.name)
        events = StrandsEvents()
        async for part in self.stream_handle(handle):
            for event in events.feed(part):
                yield event
            if isinstance(part, StreamEnd):
                result = await self.result(handle)  # the run's error raised as run() raises it
                if isinstance(result, MultiAgentResult):
                    yield {"type": "multiagent_result", "result": result}
                else:
                    yield {"result": result}
                return

    # -- the run -------------------------------------------------------------------------

    async def execute(self, ctx: RunContext, input: Any) -> Any:
        """Run the framework's own loop inside the Stalwart run; return its result as plain data."""
        request = decode_request(self.name, input, self._models)
        run = DurableScope(ctx)
        policies = self.app.get(self.name).policies
        try:
            with SCOPE.using(run), STREAM.using(self.stream), POLICIES.using(policies):
                if self._factory is not None:
                    target = self._factory()
                    instrument(target, local_tools=self.local_tools)
                    self._check_limits(target)
                    result = await self._invoke(ctx, target, request)
                else:
                    assert self._shared is not None
                    async with self._shared.lock:
                        self._shared.reset()
                        result = await self._invoke(ctx, self._shared.target, request)
        except Exception as exc:
            # Strands may wrap or swallow what a step raised; the run-level stop wins.
            run.finish(exc)
            raise
        run.finish()
        return result

    async def _invoke(self, ctx: RunContext, target: Target, request: RunRequest) -> Any:
        if isinstance(target, Agent):
            return await self._invoke_agent(ctx, target, request)
        _conversation.refuse(ctx, type(target).__name__)
        if (
            request.messages is not None
            or request.state is not None
            or request.invocation.keys() - {"invocation_state"}
        ):
            raise TypeError(
                f"agent {self.name!r} is a {type(target).__name__}: it takes a prompt and "
                "invocation_state only"
            )
        multi = await target.invoke_async(request.prompt, **request.invocation)
        if multi.interrupts:
            raise ConfigurationError(
                f"agent {self.name!r} stopped on a Strands interrupt in a "
                f"{type(target).__name__}; interrupts are supported in a lone Agent only"
            )
        return multi_output(multi)

    async def _invoke_agent(self, ctx: RunContext, agent: Agent, request: RunRequest) -> Any:
        added: list[dict[str, Any]] = []
        conversation = await _conversation.load(ctx, agent, request.messages)
        with _conversation.ADDED.using(added if conversation is not None else None):
            result = await self._converse(ctx, agent, request)
        if conversation is not None:
            await conversation.append(added)  # the turn's messages, once the turn completed
        return result

    async def _converse(self, ctx: RunContext, agent: Agent, request: RunRequest) -> Any:
        if request.messages is not None:
            agent.messages = [dict(m) for m in request.messages]  # type: ignore[misc]
        if request.state is not None:
            agent.state = AgentState(request.state)
        kwargs = dict(request.invocation)
        if self.max_iterations and "limits" not in kwargs:
            kwargs["limits"] = Limits(turns=self.max_iterations)
        result = await agent.invoke_async(request.prompt, **kwargs)
        # What a caller's own loop does: answer the interrupts, invoke again with the answers.
        while result.stop_reason == "interrupt" and result.interrupts:
            answers = await wait_for_answers(
                ctx,
                result.interrupts,
                self.interrupt_timeout,
                messages=agent.messages,
                approvals=self.approvals,
            )
            result = await agent.invoke_async(answers, **kwargs)
        return result_data(agent, result)


class _Models(dict[str, type[BaseModel]]):
    """The structured output models a result may name: the runner's, then the factory module's.

    A factory's agent may have a model of its own the client never saw; it is found among
    the classes already imported from the factory's module (nothing is imported).
    """

    def __init__(
        self, known: dict[str, type[BaseModel]], factory: Callable[[], Target] | None
    ) -> None:
        super().__init__(known)
        self._module = getattr(factory, "__module__", None)

    def get(self, key: str, default: Any = None) -> Any:
        found = super().get(key)
        if found is None and self._module:
            cls = loaded_class(key, (f"{self._module}.",))
            if isinstance(cls, type) and issubclass(cls, BaseModel):
                return cls
        return found if found is not None else default


def multi_output(result: MultiAgentResult) -> dict[str, Any]:
    """A graph's or swarm's result as plain data (its ``to_dict()`` under ``result``)."""
    order = getattr(result, "execution_order", None) or getattr(result, "node_history", None) or []
    return {
        "status": result.status.value,
        "order": [node.node_id for node in order],
        "outputs": {node_id: str(r).strip() for node_id, r in result.results.items()},
        # Strands' own persisted form, which the caller's MultiAgentResult is rebuilt from.
        "result": to_jsonable_python(result.to_dict(), fallback=repr),
    }
