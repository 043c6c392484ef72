"""Adapter agents deployed twice, for the patching tests (``tests.adapters.patch_apps:app``).

``PATCH_DEPLOY=v1`` (the default) serves each agent with prompt v1 and one tool;
``PATCH_DEPLOY=v2`` changes the prompt and adds a tool, for new runs only, through
:class:`stalwart.kit.Patched`. The scripted models answer with the instructions they were
given and the tools they were offered, so a result shows which version a run used. Each
agent's one tool blocks while the test has gated it (``mark_gated(run_id, "lookup")``).
"""

from __future__ import annotations

import os
from typing import Any

from agents import Agent, RunConfig, function_tool
from agents.items import ModelResponse
from agents.models.interface import Model
from agents.testing import ScriptedModel, assistant_message, function_call
from pydantic_ai import Agent as PydanticAgent
from pydantic_ai import Tool
from pydantic_ai.messages import ModelMessage, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.messages import ModelResponse as PydanticResponse
from pydantic_ai.models.function import AgentInfo, FunctionModel

from stalwart import App, current_step
from stalwart.adapters.openai_agents import DurableAgentRunner as OpenAIRunner
from stalwart.adapters.pydantic_ai import DurableAgentRunner as PydanticRunner
from stalwart.kit import Patched
from tests.helpers import count_execution, wait_if_gated

app = App("patch-adapters")
DEPLOY = os.environ.get("PATCH_DEPLOY", "v1")
PROMPTS = {1: "Answer in one line.", 2: "Answer in one line and cite the source."}


async def lookup_body(topic: str) -> str:
    info = current_step()
    assert info is not None
    await count_execution()
    await wait_if_gated(info.run_id, "lookup")
    return f"notes on {topic}"


def versions(new: Any, old: Any) -> Any:
    """The runner's source: version 1 as deployed, or both behind the patch in version 2."""
    if DEPLOY == "v2-unpatched":  # the same change without the patch: fails old runs
        return new
    return Patched("prompt-v2", new=new, old=old) if DEPLOY == "v2" else old


# -- OpenAI Agents SDK ---------------------------------------------------------------------


class EchoModel(Model):
    """Calls ``lookup`` once, then answers with its instructions and the tools it saw."""

    async def get_response(
        self,
        system_instructions: Any,
        input: Any,
        model_settings: Any,
        tools: Any,
        *a: Any,
        **k: Any,
    ) -> ModelResponse:
        outputs = (
            [i for i in input if isinstance(i, dict) and i.get("type") == "function_call_output"]
            if isinstance(input, list)
            else []
        )
        if not outputs:
            items = [function_call("lookup", {"topic": "q4"}, call_id="c1")]
        else:
            names = ",".join(sorted(t.name for t in tools))
            items = [assistant_message(f"{system_instructions} | tools={names}")]
        return await ScriptedModel([items]).get_response(
            system_instructions, input, model_settings, tools, *a, **k
        )

    def stream_response(self, *a: Any, **k: Any) -> Any:
        raise NotImplementedError


@function_tool
async def lookup(topic: str) -> str:
    """Look a topic up."""
    return await lookup_body(topic)


@function_tool
async def cite(source: str) -> str:
    """Format a citation."""
    return f"[{source}]"


def oa_v1() -> Agent[Any]:
    return Agent(name="oa", instructions=PROMPTS[1], tools=[lookup], model=EchoModel())


def oa_v2() -> Agent[Any]:
    return Agent(name="oa", instructions=PROMPTS[2], tools=[lookup, cite], model=EchoModel())


oa = OpenAIRunner(
    "oa-patched", versions(oa_v2, oa_v1), run_config=RunConfig(tracing_disabled=True), app=app
)


# -- PydanticAI ----------------------------------------------------------------------------


def echo(messages: list[ModelMessage], info: AgentInfo) -> PydanticResponse:
    returned = any(isinstance(p, ToolReturnPart) for m in messages for p in getattr(m, "parts", []))
    if not returned:
        return PydanticResponse(parts=[ToolCallPart("lookup", {"topic": "q4"}, tool_call_id="p1")])
    names = ",".join(sorted(t.name for t in info.function_tools))
    return PydanticResponse(parts=[TextPart(f"{info.instructions} | tools={names}")])


async def pyd_lookup(topic: str) -> str:
    """Look a topic up."""
    return await lookup_body(topic)


async def pyd_cite(source: str) -> str:
    """Format a citation."""
    return f"[{source}]"


def pyd_v1() -> PydanticAgent[None, str]:
    return PydanticAgent(
        FunctionModel(echo), name="pyd", instructions=PROMPTS[1], tools=[_tool(pyd_lookup)]
    )


def pyd_v2() -> PydanticAgent[None, str]:
    return PydanticAgent(
        FunctionModel(echo),
        name="pyd",
        instructions=PROMPTS[2],
        tools=[_tool(pyd_lookup), _tool(pyd_cite, "cite")],
    )


def _tool(fn: Any, name: str = "lookup") -> Any:
    return Tool(fn, name=name)


pyd = PydanticRunner("pyd-patched", versions(pyd_v2, pyd_v1), app=app, stream=False)
