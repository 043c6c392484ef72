"""Upstream-style LangGraph agents for the fidelity tests, as LangGraph's own docs write them.

Served as ``tests.adapters.langgraph_fidelity_apps:app``; the tests also build the same
graphs in the test process for the plain run. The model is the real
``langchain_openai.ChatOpenAI`` pointed at the loopback fake server (``FAKE_LLM_URL``).

- ``chatbot``: LangGraph's chatbot tutorial with tools and human-in-the-loop (a
  ``StateGraph`` of ``messages`` with ``add_messages``, ``ChatOpenAI(...).bind_tools``,
  ``ToolNode``, ``tools_condition``, a ``human_assistance`` tool that calls ``interrupt()``,
  resumed with ``Command(resume=...)`` on the same thread).
- ``react``: LangGraph's prebuilt ReAct agent (``create_react_agent``) whose model asks
  for two tools at once (each tool call is a task of its own).
- ``research``: a multi-node graph whose two researcher branches run in parallel, then a
  plain merge node, then a writer.

Tools and the merge node count their executions in Redis by thread id and wait on a gate
when the test marked them (``tests.helpers``), so a test can hold them for a SIGKILL.
"""

from __future__ import annotations

import operator
import os
import warnings
from typing import Annotated, Any

import redis
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.config import get_config
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.prebuilt import ToolNode, tools_condition
from langgraph.types import interrupt
from typing_extensions import TypedDict

from stalwart import App, Limits, Policies
from stalwart.adapters.langgraph import DurableGraphRunner
from tests.helpers import COUNTER_ENV, exec_key, gate_key, gated_key

app = App("langgraph-fidelity")

MODEL = "gpt-4o-mini"
URL_ENV = "FAKE_LLM_URL"


def thread() -> str:
    return str(get_config()["configurable"]["thread_id"])


def count(name: str) -> None:
    """Count one execution of ``name`` for this thread; wait on its gate if marked.

    Synchronous, as the tutorial's tools and nodes are (LangGraph runs them in a thread).
    """
    r = redis.Redis.from_url(os.environ[COUNTER_ENV])
    try:
        tid = thread()
        r.incr(exec_key(tid, name))
        if r.exists(gated_key(tid, name)) and r.blpop([gate_key(tid, name)], timeout=60) is None:
            raise TimeoutError(f"gate {name} of {tid} never opened")
    finally:
        r.close()


def llm(base_url: str | None = None) -> ChatOpenAI:
    return ChatOpenAI(
        model=MODEL,
        base_url=base_url or os.environ[URL_ENV],
        api_key="sk-fake",  # type: ignore[arg-type]
        max_retries=0,
    )


# -- LangGraph's chatbot tutorial (tools + human-in-the-loop) ---------------------------------


class State(TypedDict):
    messages: Annotated[list[Any], add_messages]


@tool
def search(query: str) -> str:
    """Search the web for a query."""
    count(f"search:{query}")
    return f"LangGraph is a library for building stateful agents ({query})."


@tool
def human_assistance(query: str) -> str:
    """Request assistance from a human."""
    human_response = interrupt({"query": query})
    count("human_assistance")
    return str(human_response["data"])


def chatbot_graph(base_url: str | None = None) -> Any:
    tools = [search, human_assistance]
    llm_with_tools = llm(base_url).bind_tools(tools)

    def chatbot(state: State) -> dict[str, Any]:
        message = llm_with_tools.invoke(state["messages"])
        # Because we will be interrupting during tool execution,
        # we disable parallel tool calling to avoid repeating any
        # tool invocations when we resume.
        assert len(message.tool_calls) <= 1
        return {"messages": [message]}

    graph_builder = StateGraph(State)
    graph_builder.add_node("chatbot", chatbot)
    graph_builder.add_node("tools", ToolNode(tools=tools))
    graph_builder.add_conditional_edges("chatbot", tools_condition)
    graph_builder.add_edge("tools", "chatbot")
    graph_builder.add_edge(START, "chatbot")
    memory = InMemorySaver()  # replaced by the run's own saver when run durably
    return graph_builder.compile(checkpointer=memory)


chatbot_runner = DurableGraphRunner(
    "lg-chatbot", lambda: chatbot_graph(), app=app, interrupts="return"
)
DurableGraphRunner("lg-chatbot-signal", lambda: chatbot_graph(), app=app)  # waits durably
DurableGraphRunner(
    "lg-chatbot-budget",
    lambda: chatbot_graph(),
    app=app,
    interrupts="return",
    policies=Policies(limits=Limits(max_tokens=1)),
)


# -- the prebuilt ReAct agent ----------------------------------------------------------------------


@tool
def get_weather(city: str) -> str:
    """Get the weather for a city."""
    count(f"weather:{city}")
    return f"It's always sunny in {city}!"


def react_graph(base_url: str | None = None) -> Any:
    from langgraph.prebuilt import create_react_agent
    from langgraph.warnings import LangGraphDeprecatedSinceV10

    with warnings.catch_warnings():  # deprecated for langchain's create_agent (not installed)
        warnings.simplefilter("ignore", LangGraphDeprecatedSinceV10)
        return create_react_agent(
            llm(base_url), [get_weather], prompt="You are a helpful weather assistant."
        )


react_runner = DurableGraphRunner("lg-react", lambda: react_graph(), app=app)


# -- a multi-node graph with parallel branches --------------------------------------------------


class Research(TypedDict):
    topic: str
    notes: Annotated[list[str], operator.add]
    report: str


def research_graph(base_url: str | None = None) -> Any:
    model = llm(base_url)

    def ask(system: str, text: str) -> str:
        return str(model.invoke([SystemMessage(system), HumanMessage(text)]).content)

    def plan(state: Research) -> dict[str, Any]:
        return {"notes": [ask("planner", f"Plan research on {state['topic']}")]}

    def market(state: Research) -> dict[str, Any]:
        return {"notes": [ask("market analyst", f"Market for {state['topic']}")]}

    def tech(state: Research) -> dict[str, Any]:
        return {"notes": [ask("engineer", f"Technology of {state['topic']}")]}

    def merge(state: Research) -> dict[str, Any]:
        count("merge")  # plain code between model calls: no call of its own
        return {}

    def write(state: Research) -> dict[str, Any]:
        return {"report": ask("writer", "Write up: " + " | ".join(sorted(state["notes"])))}

    b = StateGraph(Research)
    for name, fn in [("plan", plan), ("market", market), ("tech", tech)]:
        b.add_node(name, fn)
    b.add_node("merge", merge)
    b.add_node("write", write)
    b.add_edge(START, "plan")
    b.add_edge("plan", "market")
    b.add_edge("plan", "tech")
    b.add_edge(["market", "tech"], "merge")
    b.add_edge("merge", "write")
    b.add_edge("write", END)
    return b.compile()


research_runner = DurableGraphRunner("lg-research", lambda: research_graph(), app=app)
