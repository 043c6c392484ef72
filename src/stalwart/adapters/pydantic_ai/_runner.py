"""``DurableAgentRunner``: a PydanticAI agent served durably by Stalwart workers."""

from __future__ import annotations

import dataclasses
import inspect
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from pydantic_ai.agent import AbstractAgent
from pydantic_ai.usage import UsageLimits

from stalwart.adapters.pydantic_ai import _scope
from stalwart.adapters.pydantic_ai._capability import StalwartDurability
from stalwart.adapters.pydantic_ai._conversation import conversation_history, keep_turn
from stalwart.adapters.pydantic_ai._events import DurableRunEvents
from stalwart.adapters.pydantic_ai._request import (
    adapter,
    decode_request,
    decode_result,
    encode_request,
    is_result_data,
    result_data,
    run_options,
)
from stalwart.adapters.pydantic_ai._stream import DurableStreamedRunResult
from stalwart.kit import DurableRunner, build, check_max_iterations, check_source, default_app
from stalwart.policies import DEFAULT_RETRY

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from pydantic_ai.capabilities import AbstractCapability

    from stalwart.actors import App, RunContext
    from stalwart.client import Client, RunHandle
    from stalwart.policies import Policies


_NOT_RETRIED_PLAINLY = ("validate", "discovery", "capability", "operation", "model_cancel")
"""Step kinds of PydanticAI operations that, like tools, raise once when run plainly."""


def _plain_retries(policies: Policies) -> Policies:
    """``policies`` with the tool retry policy for kinds that had none of their own.

    Tool-argument validators, toolset discovery and capability operations are user code (or
    an MCP server) that PydanticAI calls once and lets raise, as it does tools: by default
    they are not retried (the tool default), unless the user set a policy for their kind.
    """
    tool = policies.retry.get("tool") or DEFAULT_RETRY["tool"]
    missing = {kind: tool for kind in _NOT_RETRIED_PLAINLY if kind not in policies.retry}
    if not missing:
        return policies
    return dataclasses.replace(policies, retry={**policies.retry, **missing})


class DurableAgentRunner(DurableRunner):
    """Serves ``agent`` as the Stalwart agent ``name``: every model and tool call a step.

    ``agent`` is the agent, or a zero-argument function building one (called once per run,
    and once more for its ``deps_type`` and ``output_type``). The agent stays as written.
    Each run calls ``agent.run`` (PydanticAI's own loop) with a
    :class:`StalwartDurability` capability added, unless the agent already carries one. A
    worker that resumes the run after a crash runs it again from the top: journaled model
    responses and tool results are fed back without calling anything, and the run continues
    live at the first call that had not completed.

    ``max_iterations`` caps the model requests of a run (PydanticAI's
    ``UsageLimits.request_limit``; ``usage_limits`` sets the others; a run's own
    ``usage_limits=`` replaces them). ``deps`` builds the run's deps in the worker from the
    plain data the caller passed as ``deps=`` (sync or async, for clients and connections
    that cannot travel); without it the data is validated into the agent's ``deps_type``. ``stream`` streams model requests and publishes their events live
    (see :class:`StalwartDurability`); ``stream=None`` (the default) is ``True`` here.

    ``run``/``submit``/``run_sync`` take ``agent.run``'s per-run inputs (:meth:`request`);
    ``run`` and ``result`` return PydanticAI's ``AgentRunResult`` (:meth:`decode_result`).
    The run's result data is that ``AgentRunResult`` in PydanticAI's serialized shape.
    A tool's error is PydanticAI's to handle, as without Stalwart: ``ModelRetry`` goes back
    to the model (journaled as the tool's result), any other exception fails the run with
    its own type and message; tools and the other non-model operations are not retried
    unless ``policies`` say so.
    """

    def __init__(
        self,
        name: str,
        agent: AbstractAgent[Any, Any] | Callable[[], AbstractAgent[Any, Any]],
        *,
        max_iterations: int | None = None,
        stream: bool | None = None,
        usage_limits: UsageLimits | None = None,
        deps: Callable[[Any], Any] | None = None,
        app: App | None = None,
        client: Client | None = None,
        policies: Policies | None = None,
    ) -> None:
        check_source(agent, AbstractAgent, "pydantic_ai Agent")
        self.agent = agent
        self.deps_factory = deps
        limits = usage_limits if usage_limits is not None else UsageLimits()
        if check_max_iterations(max_iterations) is not None:
            limits = dataclasses.replace(limits, request_limit=max_iterations)
        self.usage_limits = limits
        self.stream = True if stream is None else stream
        self._durability = StalwartDurability(name=name, stream=self.stream)
        self._template: AbstractAgent[Any, Any] | None = (
            agent if isinstance(agent, AbstractAgent) else None
        )
        own = policies or (app if app is not None else default_app).policies
        super().__init__(name, app=app, client=client, policies=_plain_retries(own))

    def template(self) -> AbstractAgent[Any, Any]:
        """The agent, or one the factory built, for its ``deps_type`` and ``output_type``."""
        if self._template is None:
            self._template = build(self.agent, AbstractAgent, "pydantic_ai Agent")
        return self._template

    def _capabilities(self, agent: AbstractAgent[Any, Any]) -> list[AbstractCapability[Any]]:
        own = StalwartDurability.from_agent(agent)
        return [] if own is not None else [self._durability]

    async def execute(self, ctx: RunContext, input: Any) -> Any:
        """Run the agent's own loop inside the Stalwart run; return its serialized result."""
        request = decode_request(input)
        deps = await self._deps(request.deps)
        options = run_options(request, self.usage_limits)
        options["message_history"] = await conversation_history(ctx, request)
        if ctx.conversation is not None:
            options["conversation_id"] = ctx.conversation.id  # the same id on every turn
        agent = build(self.agent, AbstractAgent, "pydantic_ai Agent")
        with _scope.FRAME.using(_scope.root(ctx)):
            result = await agent.run(
                request.prompt, deps=deps, capabilities=self._capabilities(agent), **options
            )
        await keep_turn(ctx, result)
        return result_data(result)

    async def _deps(self, data: Any) -> Any:
        if self.deps_factory is not None:
            deps = self.deps_factory(data)
            return await deps if inspect.isawaitable(deps) else deps
        deps_type = self.template().deps_type
        if data is None or deps_type in (object, type(None)):
            return data
        return adapter(deps_type).validate_python(data)

    def request(self, input: Any, **options: Any) -> Any:
        """The run input for prompt ``input`` and ``agent.run``'s per-run keyword arguments.

        Accepted: ``deps``, ``message_history``, ``deferred_tool_results``,
        ``model_settings``, ``usage_limits`` (replaces the runner's for this run) and
        ``metadata``. They travel as plain data. ``deps`` is dumped to JSON-mode data (a
        dataclass or pydantic model of plain values works); with a ``deps`` factory the
        factory receives that data in the worker. Deps holding a client or connection cannot
        travel: a ``TypeError`` names the field and says to pass plain data and build the
        rest with the factory.
        """
        return encode_request(input, options, factory=self.deps_factory is not None)

    def decode_result(self, data: Any) -> Any:
        """The run's ``AgentRunResult``, rebuilt from what the worker returned.

        PydanticAI's own class and serialized shape: ``output`` (validated as the agent's
        output type), ``all_messages()``, ``new_messages()``, ``all_messages_json()``,
        ``usage``; continue the conversation with ``message_history=result.all_messages()``.
        """
        if not is_result_data(data):
            return self._output(data)  # a run of an earlier version: its output only
        return decode_result(data, self.template().output_type)

    def output(self, result: Any) -> Any:
        """The agent's output from a run's result data (``handle.result()``), typed."""
        if is_result_data(result):
            return decode_result(result, self.template().output_type).output
        return self._output(result)

    def _output(self, result: Any) -> Any:
        output_type = self.template().output_type
        if isinstance(output_type, type) and output_type not in (str, object):
            return adapter(output_type).validate_python(result)
        return result

    @asynccontextmanager
    async def run_stream(
        self, input: Any = None, *, run_id: str | None = None, **options: Any
    ) -> AsyncIterator[DurableStreamedRunResult[Any]]:
        """``agent.run_stream``, durably: submit a run and stream it as PydanticAI does.

        ``async with runner.run_stream("Tell me a story", deps=...) as result:`` then the loop
        written for PydanticAI: ``async for text in result.stream_text(): ...``,
        ``await result.get_output()``, ``result.usage``, ``result.all_messages()`` (see
        :class:`DurableStreamedRunResult`). ``options`` are :meth:`submit`'s (the per-run
        inputs of :meth:`request`, ``conversation=``...). A crash of the worker in the middle
        of a model call resets that call's text; ``stream_text()`` starts it again and
        ``stream_text(delta=True)`` yields a :class:`~stalwart.adapters.StreamReset` first.

        Unlike ``agent.run_stream`` the worker runs the agent's whole loop (``agent.run``):
        tool calls of the response that carries the final result run as under ``agent.run``.
        Leaving the block early stops following; the run goes on (``result.handle.cancel()``).
        """
        handle = await self.submit(input, run_id=run_id, **options)
        async with self.attach_stream(handle) as result:
            yield result

    @asynccontextmanager
    async def attach_stream(
        self, run: RunHandle | str
    ) -> AsyncIterator[DurableStreamedRunResult[Any]]:
        """:meth:`run_stream` for a run already submitted (a handle or a run id), at any time.

        Model calls completed before attaching yield their whole text at once (from the
        journal); the call in flight streams on from the chunk the subscription gets first,
        its missed start filled in when the call completes.
        """
        handle = run if not isinstance(run, str) else (await self.client()).handle(run, self.name)
        parts = self.stream_handle(handle)
        try:
            yield DurableStreamedRunResult(self, handle, parts)
        finally:
            close = getattr(parts, "aclose", None)
            if close is not None:
                await close()

    @asynccontextmanager
    async def run_stream_events(
        self, input: Any = None, *, run_id: str | None = None, **options: Any
    ) -> AsyncIterator[DurableRunEvents[Any]]:
        """``agent.run_stream_events``, durably: PydanticAI's own events of a submitted run.

        ``async with runner.run_stream_events("...") as events: async for event in events:``
        yields ``PartStartEvent``, ``PartDeltaEvent``, ``FinalResultEvent``,
        ``FunctionToolCallEvent``, ``FunctionToolResultEvent``... then one
        ``AgentRunResultEvent``; a :class:`~stalwart.adapters.StreamReset` where a model
        call's events became void (see :class:`DurableRunEvents`).
        """
        handle = await self.submit(input, run_id=run_id, **options)
        async with self.attach_events(handle) as events:
            yield events

    @asynccontextmanager
    async def attach_events(self, run: RunHandle | str) -> AsyncIterator[DurableRunEvents[Any]]:
        """:meth:`run_stream_events` for a run already submitted (a handle or a run id).

        Steps completed before attaching come from the journal: a model call as the start and
        end event of each part of its response, a tool call as its call and result events.
        """
        handle = run if not isinstance(run, str) else (await self.client()).handle(run, self.name)
        parts = self.stream_handle(handle)
        try:
            yield DurableRunEvents(self, handle, parts)
        finally:
            close = getattr(parts, "aclose", None)
            if close is not None:
                await close()
