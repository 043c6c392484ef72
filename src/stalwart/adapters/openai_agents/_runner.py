"""``DurableAgentRunner``: an OpenAI Agents SDK agent served durably by Stalwart workers."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from agents import Agent, ItemHelpers, RunConfig, Runner
from agents.models.interface import Model
from agents.result import RunResult
from agents.run import DEFAULT_MAX_TURNS
from agents.stream_events import AgentUpdatedStreamEvent

from stalwart.adapters.openai_agents._context import (
    CONTEXTS,
    ContextJournal,
    NotPlainData,
    context_type_of,
    dump_context,
    fresh_context,
    load_context,
    restore_in_place,
)
from stalwart.adapters.openai_agents._model import SCOPE, DurableModel, DurableModelProvider
from stalwart.adapters.openai_agents._result import rebuild_result, result_data, sdk_error
from stalwart.adapters.openai_agents._session import StalwartSession
from stalwart.adapters.openai_agents._stepdata import install_usage_counter
from stalwart.adapters.openai_agents._streaming import DurableRunResultStreaming
from stalwart.adapters.openai_agents._tools import (
    AgentGraph,
    durable_input_guardrail,
    durable_output_guardrail,
)
from stalwart.errors import ConfigurationError, RunFailed
from stalwart.kit import (
    ApprovalPolicy,
    DurableRunner,
    DurableScope,
    build,
    check_max_iterations,
    check_source,
    decide_approval,
    request_approval,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from agents.items import ToolApprovalItem
    from agents.lifecycle import RunHooks
    from agents.memory import Session
    from agents.result import RunResultStreaming
    from agents.run_state import RunState

    from stalwart import Policies
    from stalwart.actors import App, RunContext
    from stalwart.client import Client, RunHandle


def durable_run_config(config: RunConfig | None = None) -> RunConfig:
    """``config`` with its model provider, model override and guardrails made durable."""
    config = config if config is not None else RunConfig()
    provider = config.model_provider
    model = config.model
    return dataclasses.replace(
        config,
        model_provider=(
            provider
            if isinstance(provider, DurableModelProvider)
            else DurableModelProvider(provider)
        ),
        model=(
            DurableModel(model)
            if isinstance(model, Model) and not isinstance(model, DurableModel)
            else model
        ),
        input_guardrails=(
            [durable_input_guardrail(g) for g in config.input_guardrails]
            if config.input_guardrails
            else config.input_guardrails
        ),
        output_guardrails=(
            [durable_output_guardrail(g) for g in config.output_guardrails]
            if config.output_guardrails
            else config.output_guardrails
        ),
    )


class DurableAgentRunner(DurableRunner):
    """Serves ``agent`` as the Stalwart agent ``name``: every model and tool call a step.

    The agent stays as written; the runner keeps the SDK's own loop (``Runner.run``, or
    ``Runner.run_streamed`` for a streamed run) and runs it on a durable twin of the agent
    graph whose model calls, tool calls, handoffs and guardrails are journaled. A worker that
    resumes the run after a crash re-runs that loop from the top, fed from the journal, and
    continues live at the first call that had not completed.

    ``agent`` is the agent, or a zero-argument function building one (called once per run).
    ``max_iterations`` is the SDK's ``max_turns`` (None: the SDK's default, 10). ``run_config``
    is used as given, with its model provider (default: the SDK's ``MultiProvider``) wrapped in
    a :class:`DurableModelProvider`.

    **Streaming.** A streamed run calls the model through its streaming API and publishes
    each raw model event live to the run's events, inside the model step (an answer's text
    delta as ``model.delta`` with ``text``, the other raw events as ``stream.item``; not
    journaled: the completed call is). ``stream=None`` (the default): runs started by
    :meth:`run_streamed` (or given ``stream=True``) stream, others do not; ``stream=True``:
    every run streams; ``stream=False``: none does (:meth:`run_streamed` then gets each model
    call's text whole, when the call is journaled). :meth:`run_streamed` gives the SDK's
    ``stream_events()`` loop for a durable run, :meth:`attach_streamed` the same for a run
    already under way.

    **Conversations.** A run submitted with ``conversation="<id>"`` continues that
    conversation: on the worker the SDK's loop gets a :class:`StalwartSession` over the
    run's durable conversation, so the model sees every earlier turn's items before the new
    input, and this turn's items are added when the run ends (stored once, in Redis; see
    :mod:`stalwart.adapters.openai_agents._session`). ``on_busy=`` says what happens when a
    run of the conversation is still going (``"queue"``, ``"reject"``, ``"interrupt"``).

    **Context.** Every run gets a run context of its own, as every plain ``Runner.run`` does:
    the ``context=`` given to :meth:`run` / :meth:`submit` (it travels to the worker as data
    and is rebuilt there as ``context_type``), else one made by the runner's ``context``: a
    zero-argument function or class called once per run, or an object each run gets a deep
    copy of. A context that is plain data (a pydantic model, a dataclass or a dict of
    JSON-compatible values) has its state journaled with every tool, handoff and guardrail
    step, so a resumed run sees exactly the context the crashed run had at that point; any
    other context works, but what the completed steps changed in it is not restored on resume.

    ``hooks`` are the SDK's ``RunHooks`` for every run (code stays on the workers: they cannot
    be given per run). They run as the SDK calls them, on replay too.

    Tool calls that need approval (``needs_approval``, evaluated by the SDK on every replay
    too) become approval requests bound to the call (see :mod:`stalwart.approvals`): the
    tool, the hash of its arguments and an expiry are journaled and announced as
    ``approval.requested``; answer with ``RunHandle.approve(call_id)`` /
    ``RunHandle.reject(call_id, message)`` (the message goes to the model). An answer for
    another call, tool or arguments, a late one or a bare ``True`` is refused
    (``approval.refused``) and the run keeps waiting. ``approvals`` is the
    :class:`~stalwart.kit.ApprovalPolicy` (expiry ``ttl``, what expiry does, whether bare
    ``True`` is accepted); ``approval_timeout`` (deprecated) is ``ApprovalPolicy(ttl=...,
    on_expiry="fail")``, its behaviour before approvals were bound.

    The run's input is a string or a list of Responses input items. :meth:`run` and
    :meth:`result` return the SDK's own ``RunResult``, rebuilt in the caller's process from
    the run's state (see :meth:`decode_result`); the run's raw result data (what
    ``RunHandle.result`` returns) is ``{"final_output": <plain data>, "state": <the SDK's
    RunState JSON>, "context": <the final context's state>}``.
    """

    def __init__(
        self,
        name: str,
        agent: Agent[Any] | Callable[[], Agent[Any]],
        *,
        max_iterations: int | None = None,
        stream: bool | None = None,
        run_config: RunConfig | None = None,
        approvals: ApprovalPolicy | None = None,
        approval_timeout: float | None = None,
        context: Any = None,
        context_type: type | None = None,
        hooks: RunHooks[Any] | None = None,
        app: App | None = None,
        client: Client | None = None,
        policies: Policies | None = None,
    ) -> None:
        check_source(agent, Agent, "agents.Agent")
        self.agent = agent
        self.max_iterations = check_max_iterations(max_iterations)
        self.stream = stream
        self.approvals = approval_policy(approvals, approval_timeout)
        self.context = context
        self.context_type = context_type_of(context, context_type)
        self.hooks = hooks
        self.durable_agent: Agent[Any] | None = None
        """The durable twin of ``agent`` that runs on the workers (None with a factory: each
        run builds its own)."""
        self._graph = AgentGraph()  # holds the clones that handoffs refer to weakly
        if isinstance(agent, Agent):
            self.durable_agent = self._graph.agent(agent)
        self._client_agent: Agent[Any] | None = agent if isinstance(agent, Agent) else None
        self.run_config = durable_run_config(run_config)
        install_usage_counter()
        super().__init__(name, app=app, client=client, policies=policies)

    # -- the caller's side -------------------------------------------------------------

    def request(self, input: Any, **options: Any) -> Any:
        """The run's wire input: ``input`` and the SDK's per-run inputs that can travel.

        ``context=`` (a pydantic model, a dataclass or a dict: sent as data, rebuilt on the
        worker as ``context_type``), ``agent=`` (the agent to start at, e.g. the previous
        result's ``last_agent``: one reachable from the runner's agent, sent by name),
        ``max_turns=``, ``previous_response_id=``, ``conversation_id=`` (the OpenAI
        server-side conversation; Stalwart's own is ``conversation=``), ``stream=True`` (this
        run streams: see the class docs). ``session=`` is taken by :meth:`run` only; run
        ``hooks`` are given to the runner.
        """
        if "hooks" in options:
            raise TypeError(
                "run hooks are code and cannot travel with a run to another process: give "
                "them to DurableAgentRunner(..., hooks=...), which every worker builds"
            )
        if "session" in options:
            raise TypeError(
                "session= is taken by DurableAgentRunner.run(), which reads the history "
                "before the run and saves the new items after it, in your process; with "
                "submit(), pass the history in the input and save the items yourself"
            )
        unknown = set(options) - _RUN_OPTIONS
        if unknown:
            raise TypeError(
                f"{type(self).__name__} takes no per-run option(s) {', '.join(sorted(unknown))}"
                f" (it takes {', '.join(sorted(_RUN_OPTIONS))})"
            )
        plain_input = super().request(input)
        if not options:
            return plain_input
        wire: dict[str, Any] = {"input": plain_input}
        if options.get("stream"):
            wire["stream"] = True
        for key in ("max_turns", "previous_response_id", "conversation_id"):
            if options.get(key) is not None:
                wire[key] = options[key]
        if options.get("context") is not None:
            wire["context"] = self._context_data(options["context"])
        agent = options.get("agent")
        if agent is not None:
            # The starting agent travels by name: the SDK's multi-turn loop starts the next
            # turn at result.last_agent, one of the agents reachable from the runner's agent.
            wire["agent"] = agent.name if isinstance(agent, Agent) else str(agent)
        return wire

    def _context_data(self, context: Any) -> Any:
        expected = self.context_type
        if expected is None and not isinstance(context, dict):
            raise TypeError(
                f"context= of type {type(context).__qualname__} cannot be rebuilt on the "
                "workers: give the runner context_type= (or context=<the class>), so every "
                "process knows what to rebuild it as"
            )
        if expected is not None and not isinstance(context, expected):
            raise TypeError(
                f"context= must be a {expected.__name__} (the runner's context type), "
                f"got {type(context).__name__}"
            )
        try:
            return dump_context(context)
        except NotPlainData as exc:
            raise TypeError(
                f"context= travels to the worker as data: {exc}. Dependencies that cannot "
                "travel (clients, connections) belong in the runner's context factory "
                "(DurableAgentRunner(..., context=lambda: ...)), built on each worker"
            ) from exc

    def decode_result(self, data: Any) -> Any:
        """The SDK's ``RunResult`` of a finished run, rebuilt from its result data.

        Built with the SDK's own ``RunState.from_json`` on the caller's agent graph (agents
        are matched by name): ``final_output`` (an ``output_type`` rebuilt as that type),
        ``new_items``, ``raw_responses``, ``input``, ``last_agent``, the guardrail results,
        and ``context_wrapper`` (``.usage``, and ``.context`` rebuilt as ``context_type``).
        ``to_input_list()`` works as after a plain run.
        """
        if not (isinstance(data, dict) and "state" in data):
            return data  # not written by this runner's execute (an older run): as it is
        return rebuild_result(self._caller_agent(), data, self.context_type)

    async def result(self, run: RunHandle | str, *, timeout: float | None = None) -> Any:
        """Wait for a run and return its ``RunResult``; a run that failed with one of the SDK's
        own errors (``UserError``...) raises it, as a plain run would (see ``sdk_error``)."""
        try:
            return await super().result(run, timeout=timeout)
        except RunFailed as failed:
            error = sdk_error(failed)
            if error is failed:
                raise
            raise error from failed

    async def run(
        self,
        input: Any,
        *,
        run_id: str | None = None,
        timeout: float | None = None,
        session: Session | None = None,
        **options: Any,
    ) -> Any:
        """Submit a run, wait for it, and return its ``RunResult`` (see :meth:`decode_result`).

        A ``context=`` object given here is updated in place with the run's final context
        (and is the result's ``context_wrapper.context``), as after a plain run.
        ``session`` is an SDK ``Session``: it stays in this process. Its history is read
        before the run and put before ``input`` (the run's input is then the whole list, as
        with a plain run), and the new input and the run's new items are added to it after
        the run, as the SDK does. Other options: see :meth:`request`.
        """
        if session is not None and options.get("conversation"):
            raise TypeError(
                "give session= (a history kept in this process) or conversation= (a durable "
                "conversation the workers keep), not both"
            )
        history = await session.get_items() if session is not None else []
        if session is not None:  # as the SDK does: the history, then the new input, as a list
            input = [*history, *ItemHelpers.input_to_new_input_list(input)]
        result = await super().run(input, run_id=run_id, timeout=timeout, **options)
        if session is not None:
            await session.add_items(result.to_input_list()[len(history) :])
        given = options.get("context")
        if given is not None and isinstance(result, RunResult):
            # As with a plain run, the caller's context object ends up with the run's changes.
            restore_in_place(given, dump_context(result.context_wrapper.context))
            result.context_wrapper.context = given
        return result

    def run_streamed(
        self, input: Any, *, run_id: str | None = None, **options: Any
    ) -> DurableRunResultStreaming:
        """``Runner.run_streamed`` for a durable run: the same result shape, the same loop.

        Returns at once; the run is submitted when ``stream_events()`` is first iterated,
        and streams live (unless the runner has ``stream=False``). Options: as
        :meth:`submit` (``context=``, ``agent=``, ``max_turns=``, ``conversation=``,
        ``on_busy=``...). See :class:`DurableRunResultStreaming` for the events, resets and
        the final result.
        """
        if "session" in options:
            raise TypeError(
                "session= keeps a history in this process and is taken by run(); a streamed "
                "run continues a durable conversation with conversation='<id>'"
            )
        if self.stream is None:
            options = {**options, "stream": True}
        self.request(input, **_own(options))  # bad input is refused now, not at first iteration

        async def start() -> RunHandle:
            return await self.submit(input, run_id=run_id, **options)

        return DurableRunResultStreaming(self, self._caller_agent(), start)

    def attach_streamed(self, run: RunHandle | str) -> DurableRunResultStreaming:
        """The streaming result of a run already under way (or ended), by handle or id.

        Model calls completed before attaching come first (each message's whole text as one
        delta), then the live events of the call in flight and of the rest of the run.
        """

        async def start() -> RunHandle:
            if isinstance(run, str):
                return (await self.client()).handle(run, self.name)
            return run

        return DurableRunResultStreaming(self, self._caller_agent(), start)

    def _caller_agent(self) -> Agent[Any]:
        if self._client_agent is None:
            self._client_agent = build(self.agent, Agent, "agents.Agent")
        return self._client_agent

    # -- the worker's side -------------------------------------------------------------

    async def execute(self, ctx: RunContext, input: Any) -> Any:
        """Run the SDK's loop on the durable agent; return its final output and state."""
        options: dict[str, Any] = {}
        if isinstance(input, dict) and "input" in input:
            options = input
            input = options["input"]
        if not isinstance(input, str | list):
            raise TypeError(
                f"agent {self.name!r} takes a string or a list of input items, "
                f"not {type(input).__name__}"
            )
        if options.get("context") is not None:
            context = load_context(self.context_type, options["context"])
        else:
            context = fresh_context(self.context)
        graph, agent = self._graph, self.durable_agent
        if agent is None:  # a factory: this run's own agents, in a graph that lives as long
            graph = AgentGraph()
            agent = graph.agent(build(self.agent, Agent, "agents.Agent"))
        if options.get("agent") is not None:
            agent = graph.find(str(options["agent"]))
        run = _RunInputs(
            context=context,
            max_turns=options.get("max_turns") or self.max_iterations or DEFAULT_MAX_TURNS,
            previous_response_id=options.get("previous_response_id"),
            conversation_id=options.get("conversation_id"),
            stream=bool(self.stream or (self.stream is None and options.get("stream"))),
            session=StalwartSession(conv) if (conv := ctx.conversation) is not None else None,
        )
        # One scope for the whole run: a run resumed after approvals continues its counters.
        journal_token = CONTEXTS.set(ContextJournal())
        try:
            with SCOPE.using(DurableScope(ctx)):
                result = await self._loop(ctx, agent, input, run)
                while result.interruptions:
                    state = result.to_state()
                    await self._decide(ctx, state, result.interruptions)
                    result = await self._loop(ctx, agent, state, run)
                # The policy of the code running now decides (the SDK evaluated needs_approval
                # again): approvals journaled for calls it no longer asks about are obsolete,
                # not a sign of changed code.
                ctx.mark_replayed("approval:")
                ctx.mark_replayed("signal:approval:")
                if run.session is not None:  # this turn's items, once the loop has ended
                    await run.session.commit()
        finally:
            CONTEXTS.reset(journal_token)
        del graph  # kept alive until here
        return result_data(result)

    async def _loop(
        self, ctx: RunContext, agent: Agent[Any], input: Any, run: _RunInputs
    ) -> RunResult | RunResultStreaming:
        if run.stream:
            return await self._streamed(ctx, agent, input, run)
        return await Runner.run(
            agent,
            input,
            context=run.context,
            hooks=self.hooks,
            run_config=self.run_config,
            max_turns=run.max_turns,
            previous_response_id=run.previous_response_id,
            conversation_id=run.conversation_id,
            session=run.session,
        )

    async def _decide(
        self, ctx: RunContext, state: RunState[Any], items: list[ToolApprovalItem]
    ) -> None:
        """Ask for the approval of each interrupted tool call, durably, and apply the answers.

        Every request is journaled and announced before the first wait, so the human sees
        all the calls that wait (answered in any order: each has its own signal).
        """
        requests = [
            await request_approval(
                ctx,
                call_id=item.call_id or item.name or "",
                tool=item.qualified_name or item.name or "",
                arguments=item.arguments,
                policy=self.approvals,
            )
            for item in items
        ]
        for item, request in zip(items, requests, strict=True):
            decision = await decide_approval(ctx, request, self.approvals)
            if decision.approved:
                state.approve(item)
            else:
                state.reject(item, rejection_message=decision.message)

    async def _streamed(
        self, ctx: RunContext, agent: Agent[Any], input: Any, run: _RunInputs
    ) -> RunResultStreaming:
        result = Runner.run_streamed(
            agent,
            input,
            context=run.context,
            hooks=self.hooks,
            run_config=self.run_config,
            max_turns=run.max_turns,
            previous_response_id=run.previous_response_id,
            conversation_id=run.conversation_id,
            session=run.session,
        )
        async for event in result.stream_events():
            if isinstance(event, AgentUpdatedStreamEvent):
                await ctx.emit("agent.updated", {"agent": event.new_agent.name})
        return result


_RUN_OPTIONS = frozenset(
    {"agent", "context", "max_turns", "previous_response_id", "conversation_id", "stream"}
)


@dataclasses.dataclass(frozen=True)
class _RunInputs:
    """The SDK's per-run inputs of one run, as the worker rebuilt them."""

    context: Any
    max_turns: int
    previous_response_id: str | None
    conversation_id: str | None
    stream: bool = False
    session: StalwartSession | None = None


def _own(options: dict[str, Any]) -> dict[str, Any]:
    """The options :meth:`DurableAgentRunner.request` checks (the kit base takes the others)."""
    return {k: v for k, v in options.items() if k not in ("conversation", "on_busy")}


def approval_policy(policy: ApprovalPolicy | None, timeout: float | None) -> ApprovalPolicy:
    """The runner's approval policy from ``approvals=`` or the older ``approval_timeout=``."""
    if timeout is None:
        return policy if policy is not None else ApprovalPolicy()
    if policy is not None:
        raise ConfigurationError(
            "give approvals=ApprovalPolicy(ttl=...) or approval_timeout=, not both"
        )
    # Its meaning before approvals were bound: nobody answered in time, the run fails.
    return ApprovalPolicy(ttl=timeout, on_expiry="fail")
