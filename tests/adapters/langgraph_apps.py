"""LangGraph graphs the LangGraph adapter tests run in real worker processes.

Served as ``tests.adapters.langgraph_apps:app``. Model calls and tool calls count their
executions in Redis (``COUNTER_REDIS_URL``, keys from ``tests.helpers``), outside the worker,
so a test can prove which ran how often across a SIGKILL. A call blocks on a Redis gate
(BLPOP) when the test marked it gated for the run, which holds the run at an exact point for
the kill.
"""

from __future__ import annotations

import asyncio
import operator
import warnings
from collections.abc import Sequence
from typing import Annotated, Any, TypedDict

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool
from langgraph.config import get_config
from langgraph.func import entrypoint, task
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.types import Interrupt, interrupt
from langgraph.warnings import LangGraphDeprecatedSinceV10

from stalwart import App
from stalwart.adapters.langgraph import DurableGraphRunner
from tests.helpers import counters, exec_key, wait_if_gated

app = App("langgraph-tests")


def run_id() -> str:
    return str(get_config()["configurable"]["thread_id"])


async def called(call: str) -> None:
    """Count one execution of ``call``; then block on its gate if the test marked it gated."""
    rid = run_id()
    await counters().incr(exec_key(rid, call))
    await wait_if_gated(rid, call)


# -- a tool-calling agent with a scripted model ------------------------------------------


def _call(name: str, call_id: str, **args: Any) -> dict[str, Any]:
    return {"name": name, "args": args, "id": call_id, "type": "tool_call"}


SCRIPT: list[AIMessage] = [
    AIMessage(
        content="",
        id="ai-0",
        tool_calls=[
            _call("lookup", "call-a", query="pricing"),
            _call("lookup", "call-b", query="competitors"),
            _call("lookup", "call-c", query="churn"),
        ],
    ),
    AIMessage(content="", id="ai-1", tool_calls=[_call("summarize", "call-d", topic="market")]),
    AIMessage(content="final: pricing, competitors and churn summarized", id="ai-2"),
]


class ScriptedChatModel(BaseChatModel):
    """Answers the n-th model call of a conversation with ``SCRIPT[n]``.

    The position comes from the conversation (the number of AI messages in it), not from
    state in the model object, so a worker that resumes a run gets the right answer.
    """

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ScriptedChatModel:
        return self

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> ChatResult:
        raise NotImplementedError("the scripted model is async-only")

    async def _agenerate(
        self, messages: list[BaseMessage], *args: Any, **kwargs: Any
    ) -> ChatResult:
        n = sum(isinstance(m, AIMessage) for m in messages)
        await called(f"model:{n}")
        return ChatResult(generations=[ChatGeneration(message=SCRIPT[n].model_copy())])


@tool
async def lookup(query: str) -> str:
    """Look a topic up."""
    await called(f"lookup:{query}")
    return f"{query}: 3 findings"


@tool
async def summarize(topic: str) -> str:
    """Summarize what was found."""
    await called(f"summarize:{topic}")
    return f"summary of {topic}"


def describe(state: dict[str, Any]) -> list[list[Any]]:
    """The conversation without its random message ids: equal across runs."""
    out: list[list[Any]] = []
    for m in state["messages"]:
        calls = [c["name"] + ":" + c["id"] for c in getattr(m, "tool_calls", None) or []]
        extra = m.tool_call_id if isinstance(m, ToolMessage) else None
        out.append([m.type, m.content, calls, extra])
    return out


def _agent() -> Any:
    from langgraph.prebuilt import create_react_agent

    # Deprecated for langchain's create_agent, which is not installed here; both compile to
    # a graph whose tool calls are tasks of their own.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LangGraphDeprecatedSinceV10)
        return create_react_agent(ScriptedChatModel(), [lookup, summarize])


agent_runner = DurableGraphRunner("lg-agent", _agent(), app=app, output_fn=describe)


# -- a graph with a subgraph (the multi-agent form) --------------------------------------


class Research(TypedDict):
    topic: str
    findings: Annotated[list[str], operator.add]


class Team(TypedDict):
    topic: str
    notes: Annotated[list[str], operator.add]
    findings: list[str]


async def plan(state: Research) -> dict[str, Any]:
    await called("sub:plan")
    return {"findings": [f"plan for {state['topic']}"]}


async def search(state: Research) -> dict[str, Any]:
    await called("sub:search")
    return {"findings": [f"3 sources on {state['topic']}"]}


async def write(state: Research) -> dict[str, Any]:
    await called("sub:write")
    return {"findings": [f"draft on {state['topic']}"]}


def _researcher() -> Any:
    b = StateGraph(Research)
    b.add_node("plan", plan)
    b.add_node("search", search)
    b.add_node("write", write)
    b.add_edge(START, "plan")
    b.add_edge("plan", "search")
    b.add_edge("search", "write")
    b.add_edge("write", END)
    return b.compile()


async def brief(state: Team) -> dict[str, Any]:
    await called("parent:brief")
    return {"notes": [f"brief: {state['topic']}"], "findings": []}


async def review(state: Team) -> dict[str, Any]:
    await called("parent:review")
    return {"notes": [f"reviewed: {' | '.join(state['findings'])}"]}


def _team() -> Any:
    b = StateGraph(Team)
    b.add_node("brief", brief)
    b.add_node("researcher", _researcher())
    b.add_node("review", review)
    b.add_edge(START, "brief")
    b.add_edge("brief", "researcher")
    b.add_edge("researcher", "review")
    b.add_edge("review", END)
    return b.compile()


team_runner = DurableGraphRunner("lg-team", _team, app=app)  # a factory: a graph per run


# -- the functional API ------------------------------------------------------------------


@task
async def fetch(source: str) -> str:
    await called(f"fetch:{source}")
    return f"{source}-data"


@task
async def combine(parts: list[str]) -> str:
    await called("combine")
    return " + ".join(parts)


@entrypoint()
async def pipeline(sources: list[str]) -> str:
    parts = await asyncio.gather(*(fetch(s) for s in sources))
    return await combine(list(parts))


func_runner = DurableGraphRunner("lg-func", pipeline, app=app)


# -- interrupts --------------------------------------------------------------------------


class Approval(TypedDict):
    request: str
    decision: str


async def ask(state: Approval) -> dict[str, Any]:
    answer = interrupt({"question": f"approve {state['request']}?"})
    await called("approved")
    return {"decision": str(answer)}


def _approval() -> Any:
    b = StateGraph(Approval)
    b.add_node("ask", ask)
    b.add_edge(START, "ask")
    b.add_edge("ask", END)
    return b.compile()


def auto_approve(interrupts: Sequence[Interrupt]) -> dict[str, Any]:
    return {i.id: f"yes to {i.value['question']}" for i in interrupts}


class ApprovalThen(Approval):
    done: bool


async def after(state: ApprovalThen) -> dict[str, Any]:
    await called("after")
    return {"done": True}


def _approval_then() -> Any:
    b = StateGraph(ApprovalThen)
    b.add_node("ask", ask)
    b.add_node("after", after)
    b.add_edge(START, "ask")
    b.add_edge("ask", "after")
    b.add_edge("after", END)
    return b.compile()


class Pair(TypedDict):
    request: str
    answers: Annotated[list[str], operator.add]


async def ask_legal(state: Pair) -> dict[str, Any]:
    answer = interrupt({"question": f"legal: {state['request']}?"})
    await called("legal")
    return {"answers": [f"legal {answer}"]}


async def ask_finance(state: Pair) -> dict[str, Any]:
    answer = interrupt({"question": f"finance: {state['request']}?"})
    await called("finance")
    return {"answers": [f"finance {answer}"]}


def _sub_approval() -> Any:
    b = StateGraph(Pair)
    b.add_node("legal", ask_legal)
    b.add_edge(START, "legal")
    b.add_edge("legal", END)
    return b.compile()


def _pair() -> Any:
    # Two interrupts at once: one in a parallel branch, one inside a subgraph.
    b = StateGraph(Pair)
    b.add_node("finance", ask_finance)
    b.add_node("review", _sub_approval())
    b.add_edge(START, "finance")
    b.add_edge(START, "review")
    b.add_edge(["finance", "review"], END)
    return b.compile()


DurableGraphRunner("lg-approval", _approval(), app=app, interrupts="fail")
DurableGraphRunner("lg-approval-pair", _pair(), app=app)
DurableGraphRunner("lg-approval-then", _approval_then(), app=app)
DurableGraphRunner("lg-approval-signal", _approval(), app=app)
DurableGraphRunner("lg-approval-auto", _approval(), app=app, on_interrupt=auto_approve)


# -- a long loop, for journal growth -----------------------------------------------------


class Loop(MessagesState):
    n: int
    limit: int


async def think(state: Loop) -> dict[str, Any]:
    n = state["n"]
    return {"messages": [AIMessage(content=f"step {n}: " + "observation " * 8)], "n": n + 1}


def _loop() -> Any:
    b = StateGraph(Loop)
    b.add_node("think", think)
    b.add_edge(START, "think")
    b.add_conditional_edges("think", lambda s: END if s["n"] >= s["limit"] else "think")
    return b.compile()


DurableGraphRunner(
    "lg-loop",
    _loop(),
    app=app,
    recursion_limit=100_000,
    output_fn=lambda s: {"n": s["n"], "messages": len(s["messages"])},
)
