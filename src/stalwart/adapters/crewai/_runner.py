"""``DurableCrewRunner`` and ``DurableAgentRunner``: CrewAI crews and agents served durably."""

from __future__ import annotations

import asyncio
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
from crewai import Agent, Crew
from crewai.llms.base_llm import BaseLLM
from crewai.types.streaming import CrewStreamingOutput

from stalwart.adapters._base import DurableRunner
from stalwart.adapters.crewai._codec import returned_models
from stalwart.adapters.crewai._hooks import install
from stalwart.adapters.crewai._scope import CrewRun
from stalwart.errors import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from crewai.crews.crew_output import CrewOutput
    from crewai.lite_agent_output import LiteAgentOutput
    from crewai.tasks.task_output import TaskOutput
    from pydantic import BaseModel

    from stalwart.actors import App, RunContext
    from stalwart.client import Client
    from stalwart.policies import Policies

T = TypeVar("T")


class TaskResult(msgspec.Struct, omit_defaults=True):
    """One task's output in a :class:`CrewResult`."""

    description: str
    agent: str
    raw: str
    name: str | None = None
    json_dict: dict[str, Any] | None = None
    pydantic: dict[str, Any] | None = None
    """A pydantic output, dumped to JSON-mode data."""


class CrewResult(msgspec.Struct, omit_defaults=True):
    """A crew run's result: CrewAI's ``CrewOutput`` as plain data."""

    raw: str
    tasks: list[TaskResult] = []
    json_dict: dict[str, Any] | None = None
    pydantic: dict[str, Any] | None = None
    token_usage: dict[str, Any] = {}


class AgentResult(msgspec.Struct, omit_defaults=True):
    """An agent run's result: CrewAI's ``LiteAgentOutput`` as plain data."""

    raw: str
    agent: str = ""
    pydantic: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None


def _dump(model: BaseModel | None) -> dict[str, Any] | None:
    return model.model_dump(mode="json") if model is not None else None


def _task_result(output: TaskOutput) -> TaskResult:
    return TaskResult(
        description=output.description,
        agent=output.agent,
        raw=output.raw,
        name=output.name,
        json_dict=output.json_dict,
        pydantic=_dump(output.pydantic),
    )


def crew_result(output: CrewOutput) -> CrewResult:
    """A ``CrewOutput`` as a :class:`CrewResult` (what a crew run returns)."""
    return CrewResult(
        raw=output.raw,
        tasks=[_task_result(t) for t in output.tasks_output],
        json_dict=output.json_dict,
        pydantic=_dump(output.pydantic),
        token_usage=output.token_usage.model_dump(mode="json"),
    )


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

    The run's input is the crew's kickoff ``inputs`` (a dict, or None); its result is a
    :class:`CrewResult` (plain data from the client; :meth:`run` returns a ``CrewResult``).

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
        app: App | None = None,
        client: Client | None = None,
        policies: Policies | None = None,
        allowed_types: Iterable[type[BaseModel]] = (),
    ) -> None:
        if not (isinstance(crew, Crew) or callable(crew)):
            raise ConfigurationError(
                f"crew must be a Crew or a function returning one, not {crew!r}"
            )
        self.crew = crew
        self.allowed_types = tuple(allowed_types)
        install()
        super().__init__(name, app=app, client=client, policies=policies)

    def build(self) -> Crew:
        """The crew one run works on."""
        return _build(self.crew, Crew, _copy_crew)

    async def execute(self, ctx: RunContext, input: Any) -> CrewResult:
        """Kick the crew off inside the Stalwart run; return its output as plain data."""
        if input is not None and not isinstance(input, dict):
            raise TypeError(
                f"agent {self.name!r} takes the crew's kickoff inputs (a dict), "
                f"not {type(input).__name__}"
            )
        crew = self.build()
        if crew.stream:
            raise ConfigurationError(f"crew {self.name!r}: stream=True is not supported")
        agents = [*crew.agents, crew.manager_agent]
        tools = [t for a in agents if a is not None for t in a.tools or []]
        tools += [t for task in crew.tasks for t in task.tools or []]
        allowed = (*self.allowed_types, *returned_models(tools))
        run = CrewRun(ctx, asyncio.get_running_loop(), crew.tasks, allowed)
        output = await run.drive(partial(crew.kickoff, inputs=input))
        if isinstance(output, CrewStreamingOutput):  # pragma: no cover - refused above
            raise ConfigurationError(f"crew {self.name!r}: stream=True is not supported")
        return crew_result(output)

    async def run(
        self, input: Any = None, *, run_id: str | None = None, timeout: float | None = None
    ) -> CrewResult:
        """Submit a run with kickoff ``inputs`` and wait for its :class:`CrewResult`."""
        handle = await self.submit(input, run_id=run_id)
        return msgspec.convert(await handle.result(timeout=timeout), CrewResult)


class DurableAgentRunner(DurableRunner):
    """Serves a single CrewAI ``Agent`` (``agent.kickoff(messages)``) as the agent ``name``.

    Like :class:`DurableCrewRunner` without a crew: each run works on ``agent.copy()`` (or
    what ``agent()`` returns) and calls ``kickoff`` in a thread, with ``response_format``
    when given. The input is a prompt string or a list of messages; the result is an
    :class:`AgentResult`. ``allowed_types``: as for :class:`DurableCrewRunner`.
    """

    def __init__(
        self,
        name: str,
        agent: Agent | Callable[[], Agent],
        *,
        response_format: type[BaseModel] | None = None,
        app: App | None = None,
        client: Client | None = None,
        policies: Policies | None = None,
        allowed_types: Iterable[type[BaseModel]] = (),
    ) -> None:
        if not (isinstance(agent, Agent) or callable(agent)):
            raise ConfigurationError(
                f"agent must be an Agent or a function returning one, not {agent!r}"
            )
        self.agent = agent
        self.response_format = response_format
        self.allowed_types = tuple(allowed_types)
        install()
        super().__init__(name, app=app, client=client, policies=policies)

    def build(self) -> Agent:
        """The agent one run works on."""
        return _build(self.agent, Agent, _copy_agent)

    async def execute(self, ctx: RunContext, input: Any) -> AgentResult:
        """Run ``agent.kickoff`` inside the Stalwart run; return its output as plain data."""
        if not isinstance(input, str | list):
            raise TypeError(
                f"agent {self.name!r} takes a prompt or a list of messages, "
                f"not {type(input).__name__}"
            )
        agent = self.build()
        allowed = (*self.allowed_types, *returned_models(agent.tools or []))
        run = CrewRun(ctx, asyncio.get_running_loop(), (), allowed)
        output: LiteAgentOutput = await run.drive(
            partial(agent.kickoff, input, response_format=self.response_format)
        )
        return AgentResult(
            raw=output.raw,
            agent=output.agent_role,
            pydantic=_dump(output.pydantic),
            usage=output.usage_metrics,
        )

    async def run(
        self, input: Any, *, run_id: str | None = None, timeout: float | None = None
    ) -> AgentResult:
        """Submit a run and wait for its :class:`AgentResult`."""
        handle = await self.submit(input, run_id=run_id)
        return msgspec.convert(await handle.result(timeout=timeout), AgentResult)
