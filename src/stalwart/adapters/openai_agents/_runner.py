"""``DurableAgentRunner``: an OpenAI Agents SDK agent served durably by Stalwart workers."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from agents import Agent, RunConfig, Runner
from agents.models.interface import Model
from agents.stream_events import AgentUpdatedStreamEvent

from stalwart.adapters._base import DurableRunner
from stalwart.adapters.openai_agents._codec import plain_output
from stalwart.adapters.openai_agents._graph import (
    AgentGraph,
    durable_input_guardrail,
    durable_output_guardrail,
)
from stalwart.adapters.openai_agents._model import DurableModel, DurableModelProvider
from stalwart.adapters.openai_agents._scope import Scope, enter, leave
from stalwart.errors import ConfigurationError

if TYPE_CHECKING:
    from agents.items import ToolApprovalItem
    from agents.result import RunResult, RunResultStreaming
    from agents.run_state import RunState

    from stalwart.actors import App, RunContext
    from stalwart.client import Client
    from stalwart.policies import Policies


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

    ``max_iterations`` is the SDK's ``max_turns``. ``run_config`` is used as given, with its
    model provider (default: the SDK's ``MultiProvider``) wrapped in a
    :class:`DurableModelProvider`. With ``stream=True``, text and argument deltas are
    published live to the run's events as ``model.delta`` (not journaled).

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
        *,
        agent: Agent[Any],
        max_iterations: int = 10,
        run_config: RunConfig | None = None,
        stream: bool = False,
        approval_timeout: float | None = None,
        context: Any = None,
        app: App | None = None,
        client: Client | None = None,
        policies: Policies | None = None,
    ) -> None:
        if max_iterations < 1:
            raise ConfigurationError(f"max_iterations must be at least 1, got {max_iterations}")
        self.agent = agent
        self.max_iterations = max_iterations
        self.stream = stream
        self.approval_timeout = approval_timeout
        self.context = context
        self._graph = AgentGraph()
        self.durable_agent = self._graph.agent(agent)
        """The durable twin of ``agent`` that runs on the workers."""
        self.run_config = durable_run_config(run_config)
        super().__init__(name, app=app, client=client, policies=policies)

    async def execute(self, ctx: RunContext, input: Any) -> Any:
        """Run the SDK's loop on the durable agent and return its final output as plain data."""
        if not isinstance(input, str | list):
            raise TypeError(
                f"agent {self.name!r} takes a string or a list of input items, "
                f"not {type(input).__name__}"
            )
        # One scope for the whole run: a run resumed after approvals continues its counters.
        token = enter(Scope(ctx))
        try:
            result = await self._loop(ctx, input)
            while result.interruptions:
                state = result.to_state()
                for item in result.interruptions:
                    await self._decide(ctx, state, item)
                result = await self._loop(ctx, state)
        finally:
            leave(token)
        return plain_output(result.final_output)

    async def _loop(self, ctx: RunContext, input: Any) -> RunResult | RunResultStreaming:
        if self.stream:
            return await self._streamed(ctx, input)
        return await Runner.run(
            self.durable_agent,
            input,
            context=self.context,
            run_config=self.run_config,
            max_turns=self.max_iterations,
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

    async def _streamed(self, ctx: RunContext, input: Any) -> RunResultStreaming:
        result = Runner.run_streamed(
            self.durable_agent,
            input,
            context=self.context,
            run_config=self.run_config,
            max_turns=self.max_iterations,
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
