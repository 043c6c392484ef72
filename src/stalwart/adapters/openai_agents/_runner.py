"""``DurableAgentRunner``: an OpenAI Agents SDK agent served durably by Stalwart workers."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from agents import Agent, RunConfig, Runner
from agents.models.interface import Model
from agents.run import DEFAULT_MAX_TURNS
from agents.stream_events import AgentUpdatedStreamEvent

from stalwart.adapters.openai_agents._codec import plain_output
from stalwart.adapters.openai_agents._model import SCOPE, DurableModel, DurableModelProvider
from stalwart.adapters.openai_agents._tools import (
    AgentGraph,
    durable_input_guardrail,
    durable_output_guardrail,
)
from stalwart.kit import DurableRunner, DurableScope, build, check_max_iterations, check_source

if TYPE_CHECKING:
    from collections.abc import Callable

    from agents.items import ToolApprovalItem
    from agents.result import RunResult, RunResultStreaming
    from agents.run_state import RunState

    from stalwart import Policies
    from stalwart.actors import App, RunContext
    from stalwart.client import Client


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
    ``Runner.run_streamed`` with ``stream=True``) and runs it on a durable twin of the agent
    graph whose model calls, tool calls, handoffs and guardrails are journaled. A worker that
    resumes the run after a crash re-runs that loop from the top, fed from the journal, and
    continues live at the first call that had not completed.

    ``agent`` is the agent, or a zero-argument function building one (called once per run).
    ``max_iterations`` is the SDK's ``max_turns`` (None: the SDK's default, 10). ``run_config`` is used as given, with its
    model provider (default: the SDK's ``MultiProvider``) wrapped in a
    :class:`DurableModelProvider`. With ``stream=True``, text and argument deltas are
    published live to the run's events as ``model.delta`` (not journaled); ``stream=None``
    (the default) is ``False`` here.

    Tool calls that need approval (``needs_approval``) become durable waits for the signal
    ``approval:<tool_call_id>``: send ``True`` / ``False``, or ``{"approved": bool,
    "message": str}`` (the message goes to the model on rejection), with
    ``RunHandle.signal``. The request is announced live as an ``approval.requested`` event;
    ``approval_timeout`` (seconds, default none) fails the run when nobody answers.

    ``context`` is the SDK's run context object (dependencies for tools and instructions),
    passed to every run this runner executes, so it must be safe to share between runs.

    The run's input is a string or a list of Responses input items; its result is the
    final output as plain data (a pydantic ``output_type`` becomes a dict).
    """

    def __init__(
        self,
        name: str,
        agent: Agent[Any] | Callable[[], Agent[Any]],
        *,
        max_iterations: int | None = None,
        stream: bool | None = None,
        run_config: RunConfig | None = None,
        approval_timeout: float | None = None,
        context: Any = None,
        app: App | None = None,
        client: Client | None = None,
        policies: Policies | None = None,
    ) -> None:
        check_source(agent, Agent, "agents.Agent")
        self.agent = agent
        self.max_iterations = check_max_iterations(max_iterations)
        self.stream = bool(stream)
        self.approval_timeout = approval_timeout
        self.context = context
        self.durable_agent: Agent[Any] | None = None
        """The durable twin of ``agent`` that runs on the workers (None with a factory: each
        run builds its own)."""
        self._graph = AgentGraph()  # holds the clones that handoffs refer to weakly
        if isinstance(agent, Agent):
            self.durable_agent = self._graph.agent(agent)
        self.run_config = durable_run_config(run_config)
        super().__init__(name, app=app, client=client, policies=policies)

    async def execute(self, ctx: RunContext, input: Any) -> Any:
        """Run the SDK's loop on the durable agent and return its final output as plain data."""
        if not isinstance(input, str | list):
            raise TypeError(
                f"agent {self.name!r} takes a string or a list of input items, "
                f"not {type(input).__name__}"
            )
        graph, agent = self._graph, self.durable_agent
        if agent is None:  # a factory: this run's own agents, in a graph that lives as long
            graph = AgentGraph()
            agent = graph.agent(build(self.agent, Agent, "agents.Agent"))
        # One scope for the whole run: a run resumed after approvals continues its counters.
        with SCOPE.using(DurableScope(ctx)):
            result = await self._loop(ctx, agent, input)
            while result.interruptions:
                state = result.to_state()
                for item in result.interruptions:
                    await self._decide(ctx, state, item)
                result = await self._loop(ctx, agent, state)
        del graph  # kept alive until here
        return plain_output(result.final_output)

    async def _loop(
        self, ctx: RunContext, agent: Agent[Any], input: Any
    ) -> RunResult | RunResultStreaming:
        if self.stream:
            return await self._streamed(ctx, agent, input)
        return await Runner.run(
            agent,
            input,
            context=self.context,
            run_config=self.run_config,
            max_turns=self.max_iterations or DEFAULT_MAX_TURNS,
        )

    async def _decide(self, ctx: RunContext, state: RunState[Any], item: ToolApprovalItem) -> None:
        """Wait durably for the approval signal of one interrupted tool call, then apply it."""
        signal = f"approval:{item.call_id or item.name}"
        await ctx.emit(
            "approval.requested",
            {"signal": signal, "tool": item.qualified_name, "arguments": item.arguments},
        )
        decision = await ctx.wait_for_signal(signal, timeout=self.approval_timeout)
        approved, message = _decision(signal, decision)
        if approved:
            state.approve(item)
        else:
            state.reject(item, rejection_message=message)

    async def _streamed(self, ctx: RunContext, agent: Agent[Any], input: Any) -> RunResultStreaming:
        result = Runner.run_streamed(
            agent,
            input,
            context=self.context,
            run_config=self.run_config,
            max_turns=self.max_iterations or DEFAULT_MAX_TURNS,
        )
        async for event in result.stream_events():
            if isinstance(event, AgentUpdatedStreamEvent):
                await ctx.emit("agent.updated", {"agent": event.new_agent.name})
        return result


def _decision(signal: str, payload: Any) -> tuple[bool, str | None]:
    if isinstance(payload, bool):
        return payload, None
    if isinstance(payload, dict) and isinstance(payload.get("approved"), bool):
        message = payload.get("message")
        return payload["approved"], message if isinstance(message, str) else None
    raise ValueError(
        f"signal {signal!r} carried {payload!r}; send True, False or "
        '{"approved": bool, "message": str}'
    )
