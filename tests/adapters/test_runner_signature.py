"""Every adapter's runner takes the same leading arguments (no servers needed).

``Runner(name, agent_or_factory, *, max_iterations=None, stream=None, app=None, client=None,
policies=None, ...)``: the framework object or a zero-argument factory in second place,
``None`` meaning "the framework's own default" for ``max_iterations`` and "the adapter's
default" for ``stream``.
"""

from __future__ import annotations

import importlib
import inspect
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from stalwart import App
from stalwart.errors import ConfigurationError
from stalwart.kit import DurableRunner

RUNNERS = [
    ("stalwart.adapters.openai_agents", "DurableAgentRunner"),
    ("stalwart.adapters.pydantic_ai", "DurableAgentRunner"),
    ("stalwart.adapters.strands", "DurableAgentRunner"),
    ("stalwart.adapters.langgraph", "DurableGraphRunner"),
    ("stalwart.adapters.crewai", "DurableCrewRunner"),
    ("stalwart.adapters.crewai", "DurableAgentRunner"),
]


def runner_class(module: str, name: str) -> type[DurableRunner]:
    try:
        adapter = importlib.import_module(module)
    except ImportError as exc:  # CrewAI lives in an environment of its own
        pytest.skip(f"{module}: {exc}")
    cls = getattr(adapter, name)
    assert issubclass(cls, DurableRunner)
    return cls  # type: ignore[no-any-return]


def app() -> App:
    return App(f"sig-{uuid.uuid4().hex[:8]}")


@pytest.mark.parametrize(("module", "name"), RUNNERS)
def test_the_leading_arguments_are_the_same_everywhere(module: str, name: str) -> None:
    params = list(inspect.signature(runner_class(module, name).__init__).parameters.values())
    assert [p.name for p in params[:2]] == ["self", "name"]
    source = params[2]
    assert source.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and source.default is source.empty
    keywords = {p.name: p for p in params[3:]}
    for keyword in ("max_iterations", "stream", "app", "client", "policies"):
        assert keywords[keyword].kind is inspect.Parameter.KEYWORD_ONLY, keyword
        assert keywords[keyword].default is None, keyword
    assert "Callable[[]" in str(source.annotation), "a factory is accepted"


@pytest.mark.parametrize(("module", "name"), RUNNERS)
def test_a_factory_is_accepted_and_called_per_run_not_at_construction(
    module: str, name: str
) -> None:
    calls: list[int] = []

    def factory() -> Any:
        calls.append(1)
        raise AssertionError("called at construction")

    runner_class(module, name)("sig", factory, app=app())
    assert calls == []


@pytest.mark.parametrize(("module", "name"), RUNNERS)
@pytest.mark.parametrize(
    "bad",
    [
        {"max_iterations": 0},
        {"max_iterations": -1},
    ],
)
def test_max_iterations_below_one_is_refused(module: str, name: str, bad: dict[str, Any]) -> None:
    cls = runner_class(module, name)
    with pytest.raises(ConfigurationError, match="max_iterations must be at least 1"):
        cls("sig", lambda: None, app=app(), **bad)


@pytest.mark.parametrize(("module", "name"), RUNNERS)
def test_something_neither_an_object_nor_a_factory_is_refused(module: str, name: str) -> None:
    with pytest.raises(ConfigurationError, match="or a function returning one"):
        runner_class(module, name)("sig", 42, app=app())


def _graph() -> Any:
    from langgraph.graph import END, START, StateGraph

    class State(dict[str, Any]):
        pass

    builder: Any = StateGraph(dict)
    builder.add_node("n", lambda state: state)
    builder.add_edge(START, "n")
    builder.add_edge("n", END)
    return builder.compile()


def test_langgraph_max_iterations_is_the_recursion_limit_under_its_older_name_too() -> None:
    cls = runner_class("stalwart.adapters.langgraph", "DurableGraphRunner")
    graph: Callable[[], Any] = _graph
    old: Any = cls("sig", graph, app=app(), recursion_limit=7)
    new: Any = cls("sig", graph, app=app(), max_iterations=7)
    assert old.max_iterations == new.max_iterations == old.recursion_limit == 7
    assert old._run_config("r", None)["recursion_limit"] == 7
    with pytest.raises(ConfigurationError, match="not both"):
        cls("sig", graph, app=app(), max_iterations=7, recursion_limit=7)


def test_crewai_streams_as_the_crew_says_unless_told() -> None:
    crew: Any = runner_class("stalwart.adapters.crewai", "DurableCrewRunner")
    agent: Any = runner_class("stalwart.adapters.crewai", "DurableAgentRunner")
    assert crew("sig", lambda: None, app=app()).stream is None  # Crew(stream=...) decides
    assert crew("sig", lambda: None, app=app(), stream=True).stream is True
    assert agent("sig", lambda: None, app=app()).stream is False
    assert agent("sig", lambda: None, app=app(), stream=True).stream is True


def test_defaults_keep_each_adapters_behaviour() -> None:
    oa: Any = runner_class("stalwart.adapters.openai_agents", "DurableAgentRunner")
    pyd: Any = runner_class("stalwart.adapters.pydantic_ai", "DurableAgentRunner")
    st: Any = runner_class("stalwart.adapters.strands", "DurableAgentRunner")
    assert oa("sig", lambda: None, app=app()).stream is None  # per run: run_streamed streams
    assert pyd("sig", lambda: None, app=app()).stream is True
    assert st("sig", lambda: None, app=app()).stream is True
    lg: Any = runner_class("stalwart.adapters.langgraph", "DurableGraphRunner")
    assert lg("sig", lambda: None, app=app()).stream is None  # streams runs astream starts
    assert lg("sig", lambda: None, app=app(), stream=True).stream is True
    assert pyd("sig", lambda: None, app=app()).usage_limits.request_limit == 50
