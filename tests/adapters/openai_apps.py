"""OpenAI Agents SDK agents that the adapter tests run in real worker processes.

Served as ``tests.adapters.openai_apps:app``. As in ``tests/apps.py``, everything a test
needs to observe across a SIGKILL lives in Redis (``COUNTER_REDIS_URL``): every real model
call is logged (``modelcalls:<run_id>``, the step key it ran in), every tool body counts its
executions (``exec:<run_id>:<step key>``), and a tool whose step key is marked
``gated:<run_id>:<step key>`` blocks on the list ``gate:<run_id>:<step key>`` before doing
anything, which holds a run at an exact point.

The scripted models decide their answer from the conversation they are given (how many
tool results it holds), never from an in-process counter: the process that made the
previous calls may be dead.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

from agents import (
    Agent,
    GuardrailFunctionOutput,
    OpenAIChatCompletionsModel,
    RunConfig,
    RunContextWrapper,
    Runner,
    ToolGuardrailFunctionOutput,
    ToolInputGuardrailData,
    ToolOutputGuardrailData,
    function_tool,
    handoff,
    input_guardrail,
    output_guardrail,
    tool_input_guardrail,
    tool_output_guardrail,
)
from agents.items import ModelResponse, TResponseOutputItem, TResponseStreamEvent
from agents.models.interface import Model, ModelProvider
from agents.testing import ScriptedModel, assistant_message, function_call
from openai import AsyncOpenAI
from openai.types.responses import ResponseTextDeltaEvent
from pydantic import BaseModel

from stalwart import App, current_step
from stalwart.adapters.openai_agents import DurableAgentRunner
from stalwart.kit import ApprovalPolicy
from tests.helpers import calls_key, counters, exec_key, gated_key, wait_gate, wait_if_gated

app = App("openai-tests")


async def count(label: str = "") -> None:
    """Count one execution of the step whose body is running (``label`` for sub-parts).

    A gated step waits before it counts (the Strands apps count first).
    """
    info = current_step()
    assert info is not None, "called outside a step"
    key = info.key if not label else f"{info.key}:{label}"
    await wait_if_gated(info.run_id, key)
    await counters().incr(exec_key(info.run_id, key))


# -- a scripted model that survives its process ------------------------------------------

Script = Callable[[list[Any]], list[TResponseOutputItem]]


def tool_outputs(items: Any) -> list[str]:
    if not isinstance(items, list):
        return []
    return [
        str(i.get("output"))
        for i in items
        if isinstance(i, dict) and i.get("type") == "function_call_output"
    ]


class RedisScriptedModel(Model):
    """Answers from a script of the conversation; logs each real call in Redis.

    The answer is built by the SDK's own ``agents.testing.ScriptedModel`` (one step each
    call), so streaming produces the SDK's exact event sequence.
    """

    def __init__(self, script: Script) -> None:
        self.script = script

    async def _scripted(self, input: Any) -> ScriptedModel:
        info = current_step()
        run_id = info.run_id if info is not None else "none"
        await counters().rpush(calls_key(run_id), info.key if info is not None else "?")
        items = input if isinstance(input, list) else [{"role": "user", "content": input}]
        return ScriptedModel([self.script(items)])

    async def get_response(
        self, system_instructions: Any, input: Any, *args: Any, **kwargs: Any
    ) -> ModelResponse:
        model = await self._scripted(input)
        return await model.get_response(system_instructions, input, *args, **kwargs)

    async def stream_response(
        self, system_instructions: Any, input: Any, *args: Any, **kwargs: Any
    ) -> AsyncIterator[TResponseStreamEvent]:
        model = await self._scripted(input)
        async for event in model.stream_response(system_instructions, input, *args, **kwargs):
            yield event


def user_text(items: list[Any]) -> str:
    for item in items:
        if isinstance(item, dict) and item.get("role") == "user":
            return str(item.get("content"))
    return ""


CONFIG = RunConfig(tracing_disabled=True)


# -- the market-research agent: 3 model calls, 5 tool calls ------------------------------


@function_tool
async def search(query: str) -> str:
    """Search the web for market data."""
    await count()
    return f"found {len(query)} sources on {query}"


@function_tool
async def analyze(topic: str) -> str:
    """Analyze a topic."""
    await count()
    return f"{topic}: trending up"


def research_script(items: list[Any]) -> list[TResponseOutputItem]:
    outputs = tool_outputs(items)
    if not outputs:  # two parallel calls in one response
        return [
            function_call("search", {"query": "Q4 pricing"}, call_id="c1"),
            function_call("search", {"query": "Q4 competitors"}, call_id="c2"),
        ]
    if len(outputs) == 2:
        return [
            function_call("analyze", {"topic": "pricing"}, call_id="c3"),
            function_call("analyze", {"topic": "competitors"}, call_id="c4"),
            function_call("search", {"query": "Q4 demand"}, call_id="c5"),
        ]
    return [assistant_message(f"{user_text(items)} => " + " | ".join(outputs))]


research_agent = Agent(
    name="research-analyst",
    instructions="You research markets.",
    tools=[search, analyze],
    model=RedisScriptedModel(research_script),
)
research = DurableAgentRunner(
    "oa-research", agent=research_agent, max_iterations=10, run_config=CONFIG, app=app
)
research_stream = DurableAgentRunner(
    "oa-research-stream", agent=research_agent, run_config=CONFIG, stream=True, app=app
)


# -- handoff, guardrails, structured output ----------------------------------------------


class Report(BaseModel):
    summary: str
    score: int


@function_tool
async def lookup(topic: str) -> str:
    """Look facts up."""
    await count()
    return f"facts about {topic}"


guard_agent = Agent(
    name="topic-guard",
    instructions="Say whether the request is about markets.",
    model=RedisScriptedModel(
        lambda items: [assistant_message("off-topic" if "cooking" in user_text(items) else "ok")]
    ),
)


@input_guardrail
async def topic_check(ctx: Any, agent: Agent[Any], input: Any) -> GuardrailFunctionOutput:
    await count()
    verdict = await Runner.run(guard_agent, input, run_config=CONFIG)
    return GuardrailFunctionOutput(
        output_info={"verdict": verdict.final_output},
        tripwire_triggered=verdict.final_output == "off-topic",
    )


@output_guardrail
async def score_check(ctx: Any, agent: Agent[Any], output: Report) -> GuardrailFunctionOutput:
    await count()
    return GuardrailFunctionOutput(output_info=None, tripwire_triggered=output.score < 0)


def specialist_script(items: list[Any]) -> list[TResponseOutputItem]:
    outputs = tool_outputs(items)
    if len(outputs) == 1:  # only the handoff's transfer message so far
        return [function_call("lookup", {"topic": "Q4"}, call_id="k1")]
    return [assistant_message(json.dumps({"summary": outputs[-1], "score": len(outputs)}))]


specialist = Agent(
    name="specialist",
    instructions="You write market reports.",
    tools=[lookup],
    model=RedisScriptedModel(specialist_script),
    output_type=Report,
    output_guardrails=[score_check],
)


async def on_handoff(ctx: Any) -> None:
    await count()


triage_agent = Agent(
    name="triage",
    instructions="Route market questions to the specialist.",
    handoffs=[handoff(specialist, on_handoff=on_handoff)],
    model=RedisScriptedModel(
        lambda items: [function_call("transfer_to_specialist", {}, call_id="h1")]
    ),
    input_guardrails=[topic_check],
)
triage = DurableAgentRunner("oa-triage", agent=triage_agent, run_config=CONFIG, app=app)


# -- an agent used as a tool (nested runs) -----------------------------------------------


def writer_script(items: list[Any]) -> list[TResponseOutputItem]:
    outputs = tool_outputs(items)
    if not outputs:
        return [function_call("lookup", {"topic": user_text(items)}, call_id="w1")]
    return [assistant_message(f"draft on {outputs[0]}")]


writer = Agent(
    name="writer",
    instructions="Write.",
    tools=[lookup],
    model=RedisScriptedModel(writer_script),
)


def editor_script(items: list[Any]) -> list[TResponseOutputItem]:
    outputs = tool_outputs(items)
    if not outputs:
        return [
            function_call("write", {"input": "pricing"}, call_id="b1"),
            function_call("write", {"input": "churn"}, call_id="b2"),
        ]
    return [assistant_message(" + ".join(outputs))]


editor_agent = Agent(
    name="editor",
    instructions="Edit.",
    tools=[writer.as_tool("write", "Write a draft on a topic.")],
    model=RedisScriptedModel(editor_script),
)
editor = DurableAgentRunner("oa-editor", agent=editor_agent, run_config=CONFIG, app=app)


# -- an agent whose tool gets renamed between crash and resume ---------------------------


@function_tool(name_override=os.environ.get("TOOL_NAME", "search"))
async def versioned_search(query: str) -> str:
    """Search."""
    await count()
    return f"results for {query}"


def versioned_script(items: list[Any]) -> list[TResponseOutputItem]:
    outputs = tool_outputs(items)
    if not outputs:
        return [function_call("search", {"query": "Q4"}, call_id="v1")]
    if len(outputs) == 1:
        return [function_call("analyze", {"topic": "Q4"}, call_id="v2")]
    return [assistant_message("done")]


versioned_agent = Agent(
    name="versioned",
    instructions="Search, then analyze.",
    tools=[versioned_search, analyze],
    model=RedisScriptedModel(versioned_script),
)
versioned = DurableAgentRunner("oa-versioned", agent=versioned_agent, run_config=CONFIG, app=app)


# -- a tool that needs approval (a durable signal) --------------------------------------


@function_tool(needs_approval=True)
async def send_email(to: str, body: str) -> str:
    """Send an e-mail."""
    await count()
    return f"sent to {to}"


def mail_script(items: list[Any]) -> list[TResponseOutputItem]:
    outputs = tool_outputs(items)
    if not outputs:
        return [function_call("send_email", {"to": "cfo@example.com", "body": "Q4"}, call_id="m1")]
    return [assistant_message(f"done: {outputs[0]}")]


def build_mailer() -> Agent[Any]:
    """A factory: each run of ``oa-mailer`` gets an agent (and a durable twin) of its own."""
    return Agent(
        name="mailer",
        instructions="Mail the report.",
        tools=[send_email],
        model=RedisScriptedModel(mail_script),
    )


mailer = DurableAgentRunner("oa-mailer", build_mailer, run_config=CONFIG, app=app)


def two_mails_script(items: list[Any]) -> list[TResponseOutputItem]:
    outputs = tool_outputs(items)
    if not outputs:
        return [
            function_call("send_email", {"to": "cfo@example.com", "body": "Q4"}, call_id="m1"),
            function_call("send_email", {"to": "ceo@example.com", "body": "Q4"}, call_id="m2"),
        ]
    return [assistant_message("done: " + " | ".join(sorted(outputs)))]


two_mails = DurableAgentRunner(
    "oa-two-mails",
    lambda: Agent(
        name="mailer",
        instructions="Mail the report twice.",
        tools=[send_email],
        model=RedisScriptedModel(two_mails_script),
    ),
    run_config=CONFIG,
    app=app,
)


async def _memo_needs_approval(_ctx: Any, params: dict[str, Any], _call_id: str) -> bool:
    """The approval policy of ``send_memo``: a deploy turns it on with MEMO_APPROVAL=on."""
    return os.environ.get("MEMO_APPROVAL") == "on"


@function_tool(needs_approval=_memo_needs_approval)
async def send_memo(to: str) -> str:
    """Send a memo."""
    await count()
    return f"memo to {to}"


def memo_script(items: list[Any]) -> list[TResponseOutputItem]:
    outputs = tool_outputs(items)
    if not outputs:
        return [function_call("send_memo", {"to": "board@example.com"}, call_id="n1")]
    return [assistant_message(f"done: {outputs[0]}")]


memo = DurableAgentRunner(
    "oa-memo",
    lambda: Agent(
        name="memo",
        instructions="Send the memo.",
        tools=[send_memo],
        model=RedisScriptedModel(memo_script),
    ),
    run_config=CONFIG,
    app=app,
)
# The same agent whose approval requests expire after 2 s (the call is then rejected).
mailer_ttl = DurableAgentRunner(
    "oa-mailer-ttl",
    build_mailer,
    run_config=CONFIG,
    approvals=ApprovalPolicy(ttl=2.0),
    app=app,
)


# -- the real OpenAI client against a local fake server ----------------------------------


class FakeOpenAIProvider(ModelProvider):
    """Chat Completions models on ``FAKE_OPENAI_URL`` (read when a model is first asked for)."""

    def get_model(self, model_name: str | None) -> Model:
        client = AsyncOpenAI(
            base_url=os.environ["FAKE_OPENAI_URL"], api_key="sk-test", max_retries=3
        )
        return OpenAIChatCompletionsModel(model=model_name or "gpt-fake", openai_client=client)


http_agent = Agent(name="http", instructions="Greet.", model="gpt-fake")
http = DurableAgentRunner(
    "oa-http",
    agent=http_agent,
    run_config=RunConfig(model_provider=FakeOpenAIProvider(), tracing_disabled=True),
    app=app,
)


# -- one context per run: a tool that records each visit in the run context --------------


@function_tool
async def visit(ctx: RunContextWrapper[dict[str, Any]], name: str) -> str:
    """Record a visit in the run context."""
    ctx.context.setdefault("visits", []).append(name)
    return json.dumps(ctx.context["visits"])


def visits_script(items: list[Any]) -> list[TResponseOutputItem]:
    outputs = tool_outputs(items)
    if not outputs:
        return [function_call("visit", {"name": "visit1"}, call_id="v1")]
    return [assistant_message(outputs[-1])]


visits_agent = Agent(
    name="visits",
    instructions="Record the visit.",
    tools=[visit],
    model=RedisScriptedModel(visits_script),
)
# A template context: every run gets a copy of its own, as every plain Runner.run gets the
# context it is given.
visits = DurableAgentRunner(
    "oa-visits", visits_agent, context={"visits": []}, run_config=CONFIG, app=app
)


# -- tool guardrails: the SDK runs them around the tool call ----------------------------


@tool_input_guardrail
async def no_secrets(data: ToolInputGuardrailData) -> ToolGuardrailFunctionOutput:
    await count()
    item = json.loads(data.context.tool_arguments or "{}").get("item", "")
    if "secret" in item:
        return ToolGuardrailFunctionOutput.reject_content("not allowed", output_info={"item": item})
    return ToolGuardrailFunctionOutput.allow(output_info={"item": item})


@tool_output_guardrail
async def price_sane(data: ToolOutputGuardrailData) -> ToolGuardrailFunctionOutput:
    await count()
    return ToolGuardrailFunctionOutput.allow(output_info={"output": str(data.output)})


@function_tool(tool_input_guardrails=[no_secrets], tool_output_guardrails=[price_sane])
async def price(item: str) -> str:
    """Look a price up."""
    await count()
    return f"{item}: $10"


def prices_script(items: list[Any]) -> list[TResponseOutputItem]:
    outputs = tool_outputs(items)
    if not outputs:
        return [
            function_call("price", {"item": "apples"}, call_id="p1"),
            function_call("price", {"item": "secret sauce"}, call_id="p2"),
        ]
    if len(outputs) == 2:
        return [function_call("price", {"item": "pears"}, call_id="p3")]
    return [assistant_message(" | ".join(outputs))]


prices_agent = Agent(
    name="prices",
    instructions="Look prices up.",
    tools=[price],
    model=RedisScriptedModel(prices_script),
)
prices = DurableAgentRunner("oa-prices", prices_agent, run_config=CONFIG, app=app)


# -- streaming and conversations (issue #17) ---------------------------------------------


def inputs_key(run_id: str) -> str:
    """List of what the chat model was given in ``run_id``: the user texts, one JSON per call."""
    return f"modelinputs:{run_id}"


def pieces(text: str) -> list[str]:
    """``text`` as the word-sized deltas a real model streams (they join back to ``text``)."""
    words = text.split(" ")
    return [w + " " for w in words[:-1]] + [words[-1]]


class StreamingScriptedModel(RedisScriptedModel):
    """:class:`RedisScriptedModel` streaming each text in word-sized deltas.

    It records the user texts it was given (``inputs_key``), and after the second delta of
    a call whose ``<step key>:mid`` is gated it waits on that gate: the test holds the call
    mid-stream, with text already streamed.
    """

    @staticmethod
    async def _record(input: Any) -> None:
        info = current_step()
        run_id = info.run_id if info is not None else "none"
        items = input if isinstance(input, list) else [{"role": "user", "content": input}]
        users = [
            str(i.get("content")) for i in items if isinstance(i, dict) and i.get("role") == "user"
        ]
        await counters().rpush(inputs_key(run_id), json.dumps(users))

    async def get_response(
        self, system_instructions: Any, input: Any, *args: Any, **kwargs: Any
    ) -> ModelResponse:
        await self._record(input)
        return await super().get_response(system_instructions, input, *args, **kwargs)

    async def stream_response(
        self, system_instructions: Any, input: Any, *args: Any, **kwargs: Any
    ) -> AsyncIterator[TResponseStreamEvent]:
        info = current_step()
        run_id = info.run_id if info is not None else "none"
        await self._record(input)
        async for event in super().stream_response(system_instructions, input, *args, **kwargs):
            if not isinstance(event, ResponseTextDeltaEvent):
                yield event
                continue
            for n, piece in enumerate(pieces(event.delta)):
                yield event.model_copy(update={"delta": piece})
                gate = f"{info.key}:mid" if info is not None else ""
                if n == 1 and info is not None and await counters().exists(gated_key(run_id, gate)):
                    # Long: the test starts another worker meanwhile, slow on a loaded machine.
                    await wait_gate(run_id, gate, timeout=600)


def chat_script(items: list[Any]) -> list[TResponseOutputItem]:
    """Answers with every user text it was given, so the answer shows the history it saw."""
    users = [
        str(i.get("content")) for i in items if isinstance(i, dict) and i.get("role") == "user"
    ]
    return [assistant_message(f"turn {len(users)} heard " + " then ".join(users))]


def chat_agent() -> Agent[Any]:
    return Agent(name="chat", instructions="Chat.", model=StreamingScriptedModel(chat_script))


# stream=None (the default): runs started by run_streamed stream, others do not.
chat = DurableAgentRunner("oa-chat", chat_agent, run_config=CONFIG, app=app)


@function_tool
async def define(word: str) -> str:
    """Define a word (held by its gate when the test marks it; runs outside Stalwart too)."""
    info = current_step()
    if info is not None and await counters().exists(gated_key(info.run_id, info.key)):
        await wait_gate(info.run_id, info.key, timeout=600)  # long: a loaded machine
    return f"{word} (a greeting)"


def lookup_chat_script(items: list[Any]) -> list[TResponseOutputItem]:
    outputs = tool_outputs(items)
    if not outputs:
        return [function_call("define", {"word": user_text(items)}, call_id="L1")]
    return [assistant_message(f"the answer is {outputs[0]} for you")]


def lookup_chat_agent() -> Agent[Any]:
    return Agent(
        name="looker",
        instructions="Look up, then answer.",
        tools=[define],
        model=StreamingScriptedModel(lookup_chat_script),
    )


lookup_chat = DurableAgentRunner("oa-lookup-chat", lookup_chat_agent, run_config=CONFIG, app=app)
