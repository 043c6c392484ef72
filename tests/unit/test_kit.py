"""The adapter kit's pure rules: keys, request-shape changes, failure outcomes, scopes, steps."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import stalwart.kit as kit
from stalwart import NonDeterminismError, StepFailed
from stalwart.actors import StepInfo, StepSpec, current_step
from stalwart.errors import ConfigurationError, LeaseLost
from stalwart.kit import DurableScope, ScopeVar, ToolCallFailed


class FakeContext:
    """The two things the kit asks of a ``RunContext``: its run id and ``call``.

    ``call`` runs the body once (live) or returns ``journaled[key]`` (replayed), which is
    the contract of the real one as far as the kit can tell.
    """

    run_id = "run-1"

    def __init__(self, journaled: dict[str, Any] | None = None) -> None:
        self.journaled = journaled or {}
        self.ran: list[str] = []
        self.gate: asyncio.Event | None = None

    async def call(self, spec: StepSpec, run: Callable[[], Awaitable[Any]]) -> Any:
        if spec.key in self.journaled:
            return self.journaled[spec.key]
        self.ran.append(spec.key)
        result = await run()
        if self.gate is not None:  # the journal write, which a cancellation must not cut
            await self.gate.wait()
        self.journaled[spec.key] = result
        return result


def spec(key: str = "model:1", name: str = "gpt") -> StepSpec:
    return StepSpec(key=key, kind="model", name=name, fp="fp")


# -- tool keys -----------------------------------------------------------------------------

NQ = '{"n": 2, "q": 1}'


@pytest.mark.parametrize(
    ("call_id", "name", "args", "key"),
    [
        ("call_7", "search", {"q": 1}, "tool:call_7"),
        ("a/b", "search", None, "tool:a_b"),
        (None, "search", {"q": 1, "n": 2}, "tool:search:" + kit.text_digest(NQ)),
        ("", "search", {"n": 2, "q": 1}, "tool:search:" + kit.text_digest(NQ)),
        (None, "a/b", [], "tool:a_b:" + kit.text_digest("[]")),
    ],
)
def test_tool_key_is_the_call_id_else_name_and_canonical_args(
    call_id: str | None, name: str, args: Any, key: str
) -> None:
    assert kit.tool_key(call_id, name, args) == key


def test_canonical_json_ignores_key_order_and_object_addresses() -> None:
    class Client:
        pass

    assert kit.canonical_json({"b": 1, "a": Client()}) == kit.canonical_json(
        {"a": Client(), "b": 1}
    )
    assert "0x" not in kit.canonical_json([Client()])


# -- request shapes ------------------------------------------------------------------------

BASE: dict[str, Any] = {
    "model": "gpt",
    "instructions": "d1",
    "tools": ["search", "write"],
    "params": {"search": "p1", "write": "p2"},
    "output": "str",
}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({}, []),
        ({"model": "gpt-5"}, ["the model was 'gpt', now 'gpt-5'"]),
        ({"instructions": "d2"}, ["the instructions changed"]),
        (
            {"tools": ["web_search", "write"]},
            [
                "the tools: 'search' no longer offered, 'web_search' newly offered "
                "(renamed, removed or added)"
            ],
        ),
        (
            {"tools": ["search"]},
            ["the tools: 'write' no longer offered (renamed, removed or added)"],
        ),
        (
            {"params": {"search": "p9", "write": "p2"}},
            ["the params: search take other parameters now"],
        ),
        ({"output": "Report"}, ["the output type was 'str', now 'Report'"]),
        ({"extra": 1}, ["the extra was None, now 1"]),
    ],
)
def test_shape_changes_say_what_changed(change: dict[str, Any], expected: list[str]) -> None:
    assert kit.shape_changes(BASE, {**BASE, **change}) == expected


def test_shape_changes_compare_a_journaled_list_with_a_current_tuple() -> None:
    assert kit.shape_changes({"tools": ["a", "b"]}, {"tools": ("a", "b")}) == []


def test_same_label_is_reported_once() -> None:
    changes = kit.shape_changes(
        {"output_object": "x", "instructions": "a"}, {"output_object": "y", "instructions": "b"}
    )
    assert changes == ["the output type changed", "the instructions changed"]


def test_model_response_raises_one_nondeterminism_error_naming_the_step() -> None:
    recorded = kit.model_record({"text": "hi"}, BASE)
    assert kit.model_response("run-1", spec(), BASE, recorded) == {"text": "hi"}
    with pytest.raises(NonDeterminismError) as info:
        kit.model_response("run-1", spec(), {**BASE, "model": "other"}, recorded)
    message = str(info.value)
    assert "run 'run-1', step 'model:1' (model 'gpt')" in message
    assert "the model was 'gpt', now 'other'" in message and "fork the run" in message


async def test_model_step_journals_response_and_shape_and_checks_on_replay() -> None:
    ctx = FakeContext()

    async def body() -> str:
        return "answer"

    assert await kit.model_step(ctx, spec(), BASE, body) == "answer"  # type: ignore[arg-type]
    assert ctx.journaled["model:1"] == {"response": "answer", "request": BASE}
    replay = FakeContext(dict(ctx.journaled))
    assert await kit.model_step(replay, spec(), BASE, body) == "answer"  # type: ignore[arg-type]
    assert replay.ran == []
    with pytest.raises(NonDeterminismError, match="the tools: 'write' no longer offered"):
        await kit.model_step(replay, spec(), {**BASE, "tools": ["search"]}, body)  # type: ignore[arg-type]


# -- failures ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "outcome"),
    [
        (StepFailed("tool:1", "KeyError", "x"), "tool_error"),
        (ToolCallFailed("tool:1", "KeyError", "x"), "tool_error"),
        (StepFailed("tool:1", "ToolOutcomeUnknown", "in flight"), "stop"),
        (LeaseLost("gone"), "stop"),
        (NonDeterminismError("changed"), "stop"),
        (asyncio.CancelledError(), "stop"),
        (ValueError("bug"), "stop"),
    ],
)
def test_failure_outcome(exc: BaseException, outcome: str) -> None:
    assert kit.failure_outcome(exc) == outcome


def test_a_failed_tool_reads_as_its_own_message() -> None:
    failed = ToolCallFailed.of(StepFailed("tool:1", "ConnectionError", "backend down"))
    assert str(failed) == "backend down" and failed.error_type == "ConnectionError"
    assert isinstance(failed, StepFailed) and ToolCallFailed.of(failed) is failed


# -- scopes --------------------------------------------------------------------------------


def test_scope_keys_counters_and_children() -> None:
    scope = DurableScope(FakeContext())  # type: ignore[arg-type]
    assert [scope.next_key("model"), scope.next_key("model")] == ["model:1", "model:2"]
    assert [scope.next_named("guardrail:g"), scope.next_named("guardrail:g")] == [
        "guardrail:g",
        "guardrail:g#2",
    ]
    child = scope.child("tool:c1")
    assert child.key("tool:c2") == "tool:c1/tool:c2"
    assert child.next_key("model") == "tool:c1/model:1"  # counters are per scope
    assert child.child("inner").next_named("x") == "tool:c1/inner/x"


def test_the_first_stop_is_shared_with_children_and_raised_by_finish() -> None:
    scope = DurableScope(FakeContext())  # type: ignore[arg-type]
    child = scope.child("n")
    first, second = LeaseLost("a"), LeaseLost("b")
    assert child.fail(first) is first and scope.fail(second) is first
    assert scope.fatal is first
    with pytest.raises(LeaseLost) as info:
        scope.finish()
    assert info.value is first
    scope.finish(first)  # the loop raised the stop itself: nothing to add
    with pytest.raises(LeaseLost) as wrapped:
        scope.finish(RuntimeError("framework wrapper"))
    assert wrapped.value is first and isinstance(wrapped.value.__cause__, RuntimeError)


async def test_scope_step_remembers_stops_but_not_tool_errors() -> None:
    scope = DurableScope(FakeContext())  # type: ignore[arg-type]

    async def tool_error() -> Any:
        raise StepFailed("tool:1", "KeyError", "x")

    async def lost() -> Any:
        raise LeaseLost("gone")

    with pytest.raises(StepFailed):
        await scope.step(spec("tool:1"), tool_error)
    assert scope.fatal is None
    with pytest.raises(LeaseLost):
        await scope.step(spec("tool:2"), lost)
    assert isinstance(scope.fatal, LeaseLost)

    async def never() -> Any:
        raise AssertionError("ran after the run had to stop")

    with pytest.raises(LeaseLost):
        await scope.step(spec("tool:3"), never)


async def test_scope_var_is_inactive_inside_a_step_body() -> None:
    var: ScopeVar[str] = ScopeVar("test_kit_scope")
    assert var.get() is None
    with var.using("run"):
        assert var.active() == "run"
        with kit.in_step(StepInfo("run-1", "tool:1", 1)):
            assert current_step() == StepInfo("run-1", "tool:1", 1)
            assert var.get() == "run" and var.active() is None
        assert current_step() is None and var.active() == "run"
    assert var.get() is None


# -- steps ---------------------------------------------------------------------------------


async def test_call_step_cancelled_caller_cancels_the_body_not_the_journal_write() -> None:
    ctx = FakeContext()
    ctx.gate = asyncio.Event()
    body_done = asyncio.Event()

    async def body() -> str:
        body_done.set()
        return "done"

    caller = asyncio.ensure_future(kit.call_step(ctx, spec(), body))  # type: ignore[arg-type]
    await body_done.wait()
    caller.cancel()
    await asyncio.sleep(0)  # the cancellation reaches the caller while the write waits
    ctx.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert ctx.journaled["model:1"] == "done"  # the write completed


async def test_call_step_cancel_stops_a_running_body() -> None:
    ctx = FakeContext()
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def body() -> str:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    caller = asyncio.ensure_future(kit.call_step(ctx, spec(), body))  # type: ignore[arg-type]
    await started.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert cancelled.is_set() and "model:1" not in ctx.journaled


async def test_stream_step_forwards_live_events_and_nothing_on_replay() -> None:
    ctx = FakeContext()

    async def body(forward: Callable[[Any], None]) -> str:
        forward("a")
        forward("b")
        return "result"

    out: list[Any] = []
    events = [e async for e in kit.stream_step(ctx.call, spec(), body, out)]  # type: ignore[arg-type]
    assert events == ["a", "b"] and out == ["result"]
    replayed: list[Any] = []
    again = [e async for e in kit.stream_step(ctx.call, spec(), body, replayed)]  # type: ignore[arg-type]
    assert again == [] and replayed == ["result"]


def test_runner_arguments() -> None:
    assert kit.check_max_iterations(None) is None and kit.check_max_iterations(3) == 3
    with pytest.raises(ConfigurationError):
        kit.check_max_iterations(0)
    assert kit.build(5, int, "number") == 5
    assert kit.build(lambda: 6, int, "number") == 6
    with pytest.raises(Exception, match="must return a number"):
        kit.build(lambda: "x", int, "number")


def test_exports_are_sorted_and_documented() -> None:
    assert len(set(kit.__all__)) == len(kit.__all__)
    for name in kit.__all__:
        obj = getattr(kit, name)
        if callable(obj) and name not in ("Outcome", "StepCall"):  # type aliases
            assert obj.__doc__, name


async def test_stream_step_stops_the_step_when_the_framework_stops_reading() -> None:
    ctx = FakeContext()
    cancelled = asyncio.Event()

    async def body(forward: Callable[[Any], None]) -> str:
        forward("first")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    out: list[Any] = []
    events = kit.stream_step(kit.DurableScope(ctx).step, spec(), body, out)  # type: ignore[arg-type]
    assert await events.__anext__() == "first"
    await events.aclose()
    assert cancelled.is_set() and out == [] and "model:1" not in ctx.journaled
