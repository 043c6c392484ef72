"""``DurableCrewRunner`` and ``DurableAgentRunner``: CrewAI crews and agents served durably."""

from __future__ import annotations

import asyncio
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
from crewai import Agent, Crew
from crewai.crews.utils import enable_agent_streaming
from crewai.llms.base_llm import BaseLLM
from crewai.types.streaming import CrewStreamingOutput

from stalwart.adapters.crewai import _conversation
from stalwart.adapters.crewai._codec import returned_models
from stalwart.adapters.crewai._install import install
from stalwart.adapters.crewai._results import (
    AgentResult,
    CrewResult,
    agent_result,
    crew_result,
)
from stalwart.adapters.crewai._stream import (
    DurableCrewStreamingOutput,
    crew_chunks,
    install_relay,
)
from stalwart.adapters.crewai._threads import CrewRun
from stalwart.client import StreamEnd
from stalwart.errors import ConfigurationError
from stalwart.kit import DurableRunner, allow_map, check_max_iterations, check_source

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterable

    from crewai.crews.crew_output import CrewOutput
    from crewai.lite_agent_output import LiteAgentOutput
    from pydantic import BaseModel

    from stalwart import Policies
    from stalwart.actors import App, RunContext
    from stalwart.client import Client, RunHandle
    from stalwart.kit import ApprovalPolicy

T = TypeVar("T")


def _llms(crew: Crew) -> list[Any]:
    """The models whose usage CrewAI counts in ``CrewOutput.token_usage``, in a stable order."""
    manager = crew.manager_agent
    return [*(a.llm for a in crew.agents), manager.llm if manager is not None else None]


def _build(source: T | Callable[[], T], kind: type[T], copy: Callable[[T], T]) -> T:
    built = copy(source) if isinstance(source, kind) else source()  # type: ignore[operator]
    if not isinstance(built, kind):
        raise ConfigurationError(
            f"the factory must return a crewai {kind.__name__}, got {type(built).__name__}"
        )
    return built


def _own_counters(llm: Any) -> None:
    # A copied LLM shares its token counters with the original (and every other copy):
    # the run's usage metrics would count other runs' calls.
    counters = getattr(llm, "_token_usage", None)
    if isinstance(llm, BaseLLM) and isinstance(counters, dict):
        llm._token_usage = dict.fromkeys(counters, 0)


def _copy_crew(crew: Crew) -> Crew:
    copied = crew.copy()
    for agent in [*copied.agents, copied.manager_agent]:
        if agent is not None:
            _own_counters(getattr(agent, "llm", None))
    _own_counters(copied.manager_llm)
    return copied


def _copy_agent(agent: Agent) -> Agent:
    copied = agent.copy()
    _own_counters(copied.llm)
    return copied


def _stream_llms(agents: list[Any]) -> None:
    # What Crew.kickoff does for a streaming crew: the agents' models stream, and CrewAI's
    # event bus carries their chunks (the relay publishes them from the step bodies).
    enable_agent_streaming(a for a in agents if a is not None)
    install_relay()


def _cap_iterations(agents: list[Any], max_iterations: int | None) -> None:
    # Each CrewAI agent has its own cap (``max_iter``); the runner's applies to all of them.
    if max_iterations is not None:
        for agent in agents:
            if agent is not None:
                agent.max_iter = max_iterations


class DurableCrewRunner(DurableRunner):
    """Serves a CrewAI ``Crew`` as the Stalwart agent ``name``: every model and tool call a step.

    The crew stays as written and runs its own process (sequential or hierarchical, with
    delegation, ``async_execution`` tasks, guardrails). Each run works on its own crew:
    ``crew.copy()`` of the given crew, or what ``crew()`` returns when a factory is given
    (use one when the crew holds state a copy would share, or is expensive to validate).
    ``crew.kickoff`` runs in a thread; its model and tool calls become steps on the
    worker's event loop (see the package docs for their keys). A worker that resumes the
    run after a crash kicks the crew off again from the top: journaled model responses and
    tool results are fed back without calling anything, and the run goes live at the first
    call that had not completed, inside whatever task or delegation it was in.

    ``max_iterations`` sets every agent's ``max_iter`` (None: as the agents say).
    ``stream``: whether the agents' models stream, each chunk published live from the model
    step as CrewAI's event bus delivers it (``model.delta`` events; not journaled). None (the
    default) follows the crew's own ``Crew(stream=...)``. Read a run's stream with
    :meth:`kickoff_streaming` (CrewAI's ``CrewStreamingOutput``, durable) or
    ``stream_parts``; ``conversation="id"`` on a run continues a conversation the way
    CrewAI's crew chat does (``crew_chat_messages``; see ``_conversation``).

    Per run, ``run(inputs={...})`` (or ``submit``/``run_sync``) takes the crew's kickoff
    ``inputs``, interpolated into agents and tasks as ``crew.kickoff(inputs=...)`` does (a dict
    given as the input itself works too). :meth:`run` and :meth:`result` return CrewAI's own
    ``CrewOutput`` (``raw``, ``tasks_output``, ``json_dict``, ``pydantic``, ``token_usage``),
    rebuilt from the run's result: a :class:`CrewResult`, the plain data a client that
    submits by name (``client.submit(name, inputs)``) receives. Pydantic outputs are
    rebuilt as the tasks' ``output_pydantic`` classes (a factory is called once, on the
    first such result, to learn them) or ``allowed_types``.

    ``approvals``: an :class:`~stalwart.kit.ApprovalPolicy` binds the approvals that tool
    hooks ask for with ``context.request_human_input`` to their tool call (see
    :mod:`stalwart.adapters.crewai._human`); the hook then gets ``"approve"`` or
    ``"reject[: message]"``. None (the default): the answer is the free text sent.

    ``allowed_types``: pydantic models your tools return without declaring it. Journaled
    values are rebuilt only as the model a call expects (a task's output model), the
    providers' tool-call types, the models the crew's tools declare as their return type
    (``-> Report``) and these; a journal entry naming any other class fails the run with
    :class:`~stalwart.errors.DisallowedTypeError` (nothing is imported because Redis says so).
    """

    def __init__(
        self,
        name: str,
        crew: Crew | Callable[[], Crew],
        *,
        max_iterations: int | None = None,
        stream: bool | None = None,
        app: App | None = None,
        client: Client | None = None,
        policies: Policies | None = None,
        allowed_types: Iterable[type[BaseModel]] = (),
        approvals: ApprovalPolicy | None = None,
    ) -> None:
        check_source(crew, Crew, "crewai Crew")
        self.approvals = approvals
        self.stream = stream
        self.crew = crew
        self.max_iterations = check_max_iterations(max_iterations)
        self.allowed_types = tuple(allowed_types)
        self._models: dict[str, type[BaseModel]] | None = None
        install()
        super().__init__(name, app=app, client=client, policies=policies)

    def build(self) -> Crew:
        """The crew one run works on."""
        crew = _build(self.crew, Crew, _copy_crew)
        _cap_iterations([*crew.agents, crew.manager_agent], self.max_iterations)
        return crew

    def request(self, input: Any = None, **options: Any) -> Any:
        """The run's input: the kickoff ``inputs`` (``inputs=`` or the input itself)."""
        inputs = options.pop("inputs", None)
        if options:
            return super().request(input, **options)  # refuses them, naming them
        if input is not None and inputs is not None:
            raise TypeError("give the crew's kickoff inputs once: run(inputs={...})")
        value = inputs if inputs is not None else input
        if value is not None and not isinstance(value, dict):
            raise TypeError(f"the crew's kickoff inputs are a dict, not {type(value).__name__}")
        return super().request(value)

    def decode_result(self, data: Any) -> CrewOutput:
        """CrewAI's ``CrewOutput``, rebuilt from a run's :class:`CrewResult` data."""
        result = msgspec.convert(data, CrewResult)
        needs_models = result.pydantic_type or any(t.pydantic_type for t in result.tasks)
        return result.crew_output(self._output_models() if needs_models else None)

    def _output_models(self) -> dict[str, type[BaseModel]]:
        if self._models is None:
            crew = self.crew if isinstance(self.crew, Crew) else self.crew()
            declared = [t.output_pydantic for t in crew.tasks if t.output_pydantic is not None]
            self._models = allow_map([*declared, *self.allowed_types])
        return self._models

    async def submit(
        self, input: Any = None, *, run_id: str | None = None, **options: Any
    ) -> RunHandle:
        """Start a run (kickoff ``inputs=``) and return its handle at once."""
        return await super().submit(input, run_id=run_id, **options)

    async def run(
        self,
        input: Any = None,
        *,
        run_id: str | None = None,
        timeout: float | None = None,
        **options: Any,
    ) -> CrewOutput:
        """Run the crew durably (kickoff ``inputs=``) and return its ``CrewOutput``."""
        return await super().run(input, run_id=run_id, timeout=timeout, **options)  # type: ignore[no-any-return]

    def run_sync(
        self,
        input: Any = None,
        *,
        run_id: str | None = None,
        timeout: float | None = None,
        **options: Any,
    ) -> CrewOutput:
        """Blocking :meth:`run` for scripts."""
        return super().run_sync(input, run_id=run_id, timeout=timeout, **options)  # type: ignore[no-any-return]

    async def execute(self, ctx: RunContext, input: Any) -> CrewResult:
        """Kick the crew off inside the Stalwart run; return its output as plain data."""
        if input is not None and not isinstance(input, dict):
            raise TypeError(
                f"agent {self.name!r} takes the crew's kickoff inputs (a dict), "
                f"not {type(input).__name__}"
            )
        crew = self.build()
        streaming = crew.stream if self.stream is None else self.stream
        crew.stream = False  # as CrewAI's own streaming kickoff: the chunks come off the bus
        agents = [*crew.agents, crew.manager_agent]
        if streaming:
            _stream_llms(agents)
        inputs, history = await _conversation.crew_inputs(ctx, input)
        tools = [t for a in agents if a is not None for t in a.tools or []]
        tools += [t for task in crew.tasks for t in task.tools or []]
        allowed = (*self.allowed_types, *returned_models(tools))
        run = CrewRun(
            ctx,
            asyncio.get_running_loop(),
            crew.tasks,
            allowed,
            partial(_llms, crew),
            approvals=self.approvals,
            streaming=bool(streaming),
        )
        output = await run.drive(partial(crew.kickoff, inputs=inputs))
        if isinstance(output, CrewStreamingOutput):  # pragma: no cover - stream is off above
            raise ConfigurationError(f"crew {self.name!r}: the kickoff returned a stream")
        if history is not None:
            asked = [_conversation.user_message(input)]
            await _conversation.append_turn(ctx, asked, output.raw)
        return crew_result(output)

    # -- streaming: CrewAI's own ``CrewStreamingOutput``, durable --------------------------

    async def kickoff_streaming(
        self, input: Any = None, *, run_id: str | None = None, **options: Any
    ) -> DurableCrewStreamingOutput:
        """Submit a run and return its stream, as a streaming crew's ``kickoff`` does.

        Takes what :meth:`run` takes (``inputs=``, ``run_id=``, ``conversation=``...). The
        crew streams when the runner's ``stream`` (or the crew's) is on; otherwise each model
        call's text comes whole when the call completes. ``async for chunk in streaming``
        yields CrewAI ``StreamChunk``s (:class:`DurableStreamChunk`) and, when a worker died
        or a call is retried after part of its text was yielded, a
        :class:`~stalwart.adapters.StreamReset`: drop what was shown of ``reset.step``
        (``chunk.step`` names each chunk's); the call then streams again from its start.
        ``streaming.result`` is the ``CrewOutput`` afterwards; ``get_full_text()`` the
        text with resets applied.
        """
        handle = await self.submit(input, run_id=run_id, **options)
        return self.attach_streaming(handle)

    def attach_streaming(self, run: RunHandle | str) -> DurableCrewStreamingOutput:
        """:meth:`kickoff_streaming`'s stream of a run already submitted (handle or run id).

        Model calls completed before it attached come whole, then the call in flight live.
        """
        output: DurableCrewStreamingOutput | None = None

        async def chunks() -> AsyncIterator[Any]:
            handle = run
            if isinstance(handle, str):
                handle = (await self.client()).handle(handle, self.name)
            async for part in self.stream_handle(handle):
                item = crew_chunks(part)
                if item is not None:
                    yield item
                if isinstance(part, StreamEnd):
                    result = await self.result(handle)  # a failed run raises here, as CrewAI
                    assert output is not None
                    output.finish(result)
                    return

        output = DurableCrewStreamingOutput(chunks())
        return output


class DurableAgentRunner(DurableRunner):
    """Serves a single CrewAI ``Agent`` (``agent.kickoff(messages)``) as the agent ``name``.

    Like :class:`DurableCrewRunner` without a crew: each run works on ``agent.copy()`` (or
    what ``agent()`` returns) and calls ``kickoff`` in a thread, with ``response_format``
    when given, and ``max_iterations`` as the agent's ``max_iter``. The input is a prompt
    string or a list of messages; :meth:`run` returns CrewAI's ``LiteAgentOutput`` (``raw``,
    ``pydantic``, ``agent_role``, ``usage_metrics``), rebuilt from the run's
    :class:`AgentResult`. ``allowed_types``: as for :class:`DurableCrewRunner`.
    ``stream=True`` makes the agent's model stream, its chunks published live as for a
    crew (read them with ``stream_parts``; CrewAI has no streaming output for
    ``Agent.kickoff``). With ``conversation="id"``, the conversation's messages go in front
    of the run's and the turn (its messages and the answer) is appended when it completes.
    """

    def __init__(
        self,
        name: str,
        agent: Agent | Callable[[], Agent],
        *,
        max_iterations: int | None = None,
        stream: bool | None = None,
        response_format: type[BaseModel] | None = None,
        app: App | None = None,
        client: Client | None = None,
        policies: Policies | None = None,
        allowed_types: Iterable[type[BaseModel]] = (),
        approvals: ApprovalPolicy | None = None,
    ) -> None:
        check_source(agent, Agent, "crewai Agent")
        self.approvals = approvals
        self.stream = bool(stream)
        self.agent = agent
        self.max_iterations = check_max_iterations(max_iterations)
        self.response_format = response_format
        self.allowed_types = tuple(allowed_types)
        install()
        super().__init__(name, app=app, client=client, policies=policies)

    def build(self) -> Agent:
        """The agent one run works on."""
        agent = _build(self.agent, Agent, _copy_agent)
        _cap_iterations([agent], self.max_iterations)
        return agent

    async def execute(self, ctx: RunContext, input: Any) -> AgentResult:
        """Run ``agent.kickoff`` inside the Stalwart run; return its output as plain data."""
        if not isinstance(input, str | list):
            raise TypeError(
                f"agent {self.name!r} takes a prompt or a list of messages, "
                f"not {type(input).__name__}"
            )
        agent = self.build()
        if self.stream:
            _stream_llms([agent])
        prompt, asked = await _conversation.agent_messages(ctx, input)
        allowed = (*self.allowed_types, *returned_models(agent.tools or []))
        run = CrewRun(
            ctx,
            asyncio.get_running_loop(),
            (),
            allowed,
            lambda: [agent.llm],
            approvals=self.approvals,
            streaming=self.stream,
        )
        output: LiteAgentOutput = await run.drive(
            partial(agent.kickoff, prompt, response_format=self.response_format)
        )
        if asked is not None:
            await _conversation.append_turn(ctx, asked, output.raw)
        return agent_result(output)

    def decode_result(self, data: Any) -> LiteAgentOutput:
        """CrewAI's ``LiteAgentOutput``, rebuilt from a run's :class:`AgentResult` data."""
        models = [self.response_format] if self.response_format is not None else []
        result = msgspec.convert(data, AgentResult)
        return result.agent_output(allow_map([*models, *self.allowed_types]))
