"""``DurableAgentRunner``: a PydanticAI agent served durably by Stalwart workers."""

from __future__ import annotations

import dataclasses
import inspect
from typing import TYPE_CHECKING, Any

import msgspec
from pydantic import TypeAdapter
from pydantic_ai.messages import ModelMessagesTypeAdapter
from pydantic_ai.usage import UsageLimits
from pydantic_core import to_jsonable_python

from stalwart.adapters._base import DurableRunner
from stalwart.adapters.pydantic_ai import _scope
from stalwart.adapters.pydantic_ai._capability import StalwartDurability
from stalwart.errors import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from pydantic_ai.agent import AbstractAgent
    from pydantic_ai.capabilities import AbstractCapability
    from pydantic_ai.messages import ModelMessage

    from stalwart.actors import App, RunContext
    from stalwart.client import Client, RunHandle
    from stalwart.policies import Policies


class AgentRequest(msgspec.Struct, omit_defaults=True):
    """The input of a :class:`DurableAgentRunner` run (a plain prompt string also works)."""

    prompt: str | None = None
    deps: Any = None
    """Plain data the worker turns into the agent's deps."""
    message_history: list[Any] | None = None
    """Earlier messages, as ``ModelMessagesTypeAdapter`` dumps them in JSON mode."""


class DurableAgentRunner(DurableRunner):
    """Serves ``agent`` as the Stalwart agent ``name``: every model and tool call a step.

    The agent stays as written. Each run calls ``agent.run`` (PydanticAI's own loop) with a
    :class:`StalwartDurability` capability added, unless the agent already carries one. A
    worker that resumes the run after a crash runs it again from the top: journaled model
    responses and tool results are fed back without calling anything, and the run continues
    live at the first call that had not completed.

    ``max_iterations`` caps the model requests of a run (PydanticAI's
    ``UsageLimits.request_limit``; ``usage_limits`` sets the others). ``deps`` builds the
    run's deps in the worker from the plain data submitted with it (sync or async, for
    clients and connections that cannot travel); without it the data is validated into the
    agent's ``deps_type``. ``stream`` streams model requests and publishes their events live
    (see :class:`StalwartDurability`). The run's result is the agent's output as plain data;
    :meth:`run` converts it back to the agent's ``output_type``.
    """

    def __init__(
        self,
        name: str,
        agent: AbstractAgent[Any, Any],
        *,
        max_iterations: int | None = None,
        usage_limits: UsageLimits | None = None,
        deps: Callable[[Any], Any] | None = None,
        stream: bool = True,
        app: App | None = None,
        client: Client | None = None,
        policies: Policies | None = None,
    ) -> None:
        if max_iterations is not None and max_iterations < 1:
            raise ConfigurationError(f"max_iterations must be at least 1, got {max_iterations}")
        self.agent = agent
        self.deps_factory = deps
        limits = usage_limits if usage_limits is not None else UsageLimits()
        if max_iterations is not None:
            limits = dataclasses.replace(limits, request_limit=max_iterations)
        self.usage_limits = limits
        own = StalwartDurability.from_agent(agent)
        self._capabilities: list[AbstractCapability[Any]] = (
            [] if own is not None else [StalwartDurability(name=name, stream=stream)]
        )
        super().__init__(name, app=app, client=client, policies=policies)

    async def execute(self, ctx: RunContext, input: Any) -> Any:
        """Run the agent's own loop inside the Stalwart run; return its output as plain data."""
        request = (
            AgentRequest(prompt=input)
            if input is None or isinstance(input, str)
            else msgspec.convert(input, AgentRequest)
        )
        deps = await self._deps(request.deps)
        history = (
            ModelMessagesTypeAdapter.validate_python(request.message_history)
            if request.message_history
            else None
        )
        token = _scope.enter(_scope.root(ctx))
        try:
            result = await self.agent.run(
                request.prompt,
                deps=deps,
                message_history=history,
                usage_limits=self.usage_limits,
                capabilities=self._capabilities,
            )
        finally:
            _scope.leave(token)
        return to_jsonable_python(result.output)

    async def _deps(self, data: Any) -> Any:
        if self.deps_factory is not None:
            deps = self.deps_factory(data)
            return await deps if inspect.isawaitable(deps) else deps
        deps_type = self.agent.deps_type
        if data is None or deps_type in (object, type(None)):
            return data
        return TypeAdapter(deps_type).validate_python(data)

    async def submit(
        self,
        input: Any,
        *,
        run_id: str | None = None,
        deps: Any = None,
        message_history: Sequence[ModelMessage] | None = None,
    ) -> RunHandle:
        """Start a durable run with prompt ``input`` and return its handle at once.

        ``deps`` travels as plain data (a dataclass or pydantic model is dumped to JSON-mode
        data); the worker rebuilds the agent's deps from it.
        """
        payload: Any = input
        if deps is not None or message_history:
            payload = msgspec.to_builtins(
                AgentRequest(
                    prompt=input,
                    deps=to_jsonable_python(deps) if deps is not None else None,
                    message_history=(
                        ModelMessagesTypeAdapter.dump_python(list(message_history), mode="json")
                        if message_history
                        else None
                    ),
                )
            )
        client = await self.client()
        return await client.submit(self.name, payload, run_id=run_id)

    async def run(
        self,
        input: Any,
        *,
        run_id: str | None = None,
        timeout: float | None = None,
        deps: Any = None,
        message_history: Sequence[ModelMessage] | None = None,
    ) -> Any:
        """Submit a run, wait for it, and return the agent's output (see :meth:`output`)."""
        handle = await self.submit(input, run_id=run_id, deps=deps, message_history=message_history)
        return self.output(await handle.result(timeout=timeout))

    def output(self, result: Any) -> Any:
        """A run's result as the agent's ``output_type`` when that is a class (else as is)."""
        output_type = self.agent.output_type
        if isinstance(output_type, type) and output_type not in (str, object):
            return TypeAdapter(output_type).validate_python(result)
        return result
