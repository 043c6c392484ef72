"""What a run returns: CrewAI's ``CrewOutput`` (``LiteAgentOutput``) as plain data, and back.

A worker returns a :class:`CrewResult` (plain data any client can read); the runner's
``result()``/``run()`` rebuild CrewAI's own ``CrewOutput`` from it, pydantic outputs as the
task's ``output_pydantic`` class (only a class the crew's tasks name, or ``allowed_types``:
the result does not choose what to build). Messages come back as plain dicts (a provider's
tool-call objects in them as their JSON form).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
from crewai.crews.crew_output import CrewOutput
from crewai.lite_agent_output import LiteAgentOutput
from crewai.tasks.output_format import OutputFormat
from crewai.tasks.task_output import TaskOutput
from crewai.types.usage_metrics import UsageMetrics

from stalwart.errors import DisallowedTypeError
from stalwart.kit import type_path

if TYPE_CHECKING:
    from collections.abc import Mapping

    from pydantic import BaseModel

_HOW = "pass it to the runner: DurableCrewRunner(..., allowed_types=[YourModel])"


class TaskResult(msgspec.Struct, omit_defaults=True):
    """One task's output in a :class:`CrewResult`: CrewAI's ``TaskOutput`` as plain data."""

    description: str
    agent: str
    raw: str
    name: str | None = None
    expected_output: str | None = None
    summary: str | None = None
    output_format: str = "raw"
    json_dict: dict[str, Any] | None = None
    pydantic: dict[str, Any] | None = None
    """A pydantic output, dumped to JSON-mode data."""
    pydantic_type: str | None = None
    """The pydantic output's class, ``"<module>:<qualname>"``."""
    messages: list[dict[str, Any]] = []
    tool_failures: list[dict[str, Any]] = []

    def task_output(self, models: Mapping[str, type[BaseModel]]) -> TaskOutput:
        """CrewAI's ``TaskOutput`` for this result (``models``: output classes by type path)."""
        return TaskOutput.model_validate(
            {
                "description": self.description,
                "name": self.name,
                "expected_output": self.expected_output,
                "summary": self.summary,
                "raw": self.raw,
                "pydantic": _model(self.pydantic, self.pydantic_type, models),
                "json_dict": self.json_dict,
                "agent": self.agent,
                "output_format": OutputFormat(self.output_format),
                "messages": self.messages,
                "tool_failures": self.tool_failures,
            }
        )


class CrewResult(msgspec.Struct, omit_defaults=True):
    """A crew run's result: CrewAI's ``CrewOutput`` as plain data."""

    raw: str
    tasks: list[TaskResult] = []
    json_dict: dict[str, Any] | None = None
    pydantic: dict[str, Any] | None = None
    pydantic_type: str | None = None
    token_usage: dict[str, Any] = {}

    def crew_output(self, models: Mapping[str, type[BaseModel]] | None = None) -> CrewOutput:
        """CrewAI's ``CrewOutput`` for this result.

        ``models``: the classes pydantic outputs may be rebuilt as, by
        :func:`~stalwart.kit.type_path` (``DurableCrewRunner`` passes its tasks' output
        models and ``allowed_types``). Another class named fails with
        :class:`~stalwart.errors.DisallowedTypeError`.
        """
        allowed = models or {}
        return CrewOutput(
            raw=self.raw,
            pydantic=_model(self.pydantic, self.pydantic_type, allowed),
            json_dict=self.json_dict,
            tasks_output=[t.task_output(allowed) for t in self.tasks],
            token_usage=UsageMetrics.model_validate(self.token_usage),
        )


class AgentResult(msgspec.Struct, omit_defaults=True):
    """An agent run's result: CrewAI's ``LiteAgentOutput`` as plain data."""

    raw: str
    agent: str = ""
    pydantic: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None
    pydantic_type: str | None = None

    def agent_output(self, models: Mapping[str, type[BaseModel]] | None = None) -> LiteAgentOutput:
        """CrewAI's ``LiteAgentOutput`` for this result (``models``: as for ``CrewResult``)."""
        return LiteAgentOutput(
            raw=self.raw,
            pydantic=_model(self.pydantic, self.pydantic_type, models or {}),
            agent_role=self.agent,
            usage_metrics=self.usage,
        )


def _model(
    data: dict[str, Any] | None, path: str | None, models: Mapping[str, type[BaseModel]]
) -> BaseModel | None:
    if data is None:
        return None
    cls = models.get(path or "")
    if cls is None:
        raise DisallowedTypeError(path or "<unnamed>", _HOW)
    return cls.model_validate(data)


def _dump(model: BaseModel | None) -> tuple[dict[str, Any] | None, str | None]:
    if model is None:
        return None, None
    return model.model_dump(mode="json"), type_path(type(model))


def _task_result(output: TaskOutput) -> TaskResult:
    pydantic, pydantic_type = _dump(output.pydantic)
    plain = output.model_dump(mode="json", include={"messages", "tool_failures"})
    return TaskResult(
        description=output.description,
        agent=output.agent,
        raw=output.raw,
        name=output.name,
        expected_output=output.expected_output,
        summary=output.summary,
        output_format=OutputFormat(output.output_format).value,
        json_dict=output.json_dict,
        pydantic=pydantic,
        pydantic_type=pydantic_type,
        messages=plain["messages"],
        tool_failures=plain["tool_failures"],
    )


def crew_result(output: CrewOutput) -> CrewResult:
    """A ``CrewOutput`` as a :class:`CrewResult` (what a crew run's worker returns)."""
    pydantic, pydantic_type = _dump(output.pydantic)
    return CrewResult(
        raw=output.raw,
        tasks=[_task_result(t) for t in output.tasks_output],
        json_dict=output.json_dict,
        pydantic=pydantic,
        pydantic_type=pydantic_type,
        token_usage=output.token_usage.model_dump(mode="json"),
    )


def agent_result(output: LiteAgentOutput) -> AgentResult:
    """A ``LiteAgentOutput`` as an :class:`AgentResult` (what an agent run's worker returns)."""
    pydantic, pydantic_type = _dump(output.pydantic)
    return AgentResult(
        raw=output.raw,
        agent=output.agent_role,
        pydantic=pydantic,
        pydantic_type=pydantic_type,
        usage=output.usage_metrics,
    )
