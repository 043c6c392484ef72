"""OpenAI Agents SDK adapter: real servers, real worker processes, real SIGKILLs.

The agents live in ``tests/adapters/openai_apps.py``. Every crash test kills the worker that
owns a run at a known point (a tool held by a Redis gate), lets another worker process
resume it, and checks from Redis (outside both workers) that no model call and no completed
tool call ran twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import http.server
import json
import sys
import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

pytest.importorskip("agents")

import redis.asyncio as aioredis
from agents.items import ModelResponse
from agents.testing import assistant_message, function_call
from agents.usage import Usage
from openai.types.responses import ResponseOutputMessage

import stalwart.adapters.openai_agents as oa
from stalwart import Client, RunFailed, Settings
from stalwart.adapters.openai_agents._codec import (
    dump_response,
    dump_tool_output,
    load_response,
    without_volatile,
)
from stalwart.approvals import approval_payload
from stalwart.checkpoints import (
    StepDone,
    StepError,
    WaitStarted,
    decode_value,
)
from stalwart.errors import ApprovalRefusedError, DisallowedTypeError
from stalwart.kit import args_hash
from tests.adapters.tampering import MARKER_ENV, MARKER_MODULE, tamper_step
from tests.conftest import Servers, WorkerFactory, worker_pool
from tests.helpers import (
    at_least,
    collect_events,
    done_keys,
    entries_of,
    eventually,
    execs,
    has_all,
    journal,
    mark_gated,
    model_log,
    open_gate,
    outcome,
    owners,
    rid,
    step_owners,
)

APP = "tests.adapters.openai_apps:app"


# -- fixtures and helpers -----------------------------------------------------------------


@pytest.fixture
async def oa_workers(
    settings: Settings, servers: Servers, client: Client
) -> AsyncIterator[WorkerFactory]:
    """Worker processes serving ``APP``."""
    async with worker_pool(
        APP, settings, servers, client, OPENAI_AGENTS_DISABLE_TRACING="1"
    ) as start:
        yield start


def final(data: Any) -> Any:
    """The final output in a run's result data (the runner's ``RunResult`` is rebuilt from it)."""
    assert isinstance(data, dict) and "state" in data, data
    return data["final_output"]


async def tool_steps_done(client: Client, run_id: str) -> int:
    return sum(
        isinstance(je.entry, StepDone) and je.entry.kind == "tool"
        for je in await journal(client, run_id)
    )


# -- the acceptance run: 3 model calls, 5 tool calls, a SIGKILL after the 3rd tool --------

RESEARCH_STEPS = ["model:1", "model:2", "model:3"] + [f"tool:c{i}" for i in range(1, 6)]


@pytest.mark.slow
async def test_sigkill_after_third_tool_call_resumes_without_repeating_calls(
    client: Client, oa_workers: WorkerFactory, supervisor: Any, counters: aioredis.Redis
) -> None:
    a = await oa_workers("a")
    baseline = await client.submit("oa-research", "Analyze Q4 market trends")
    expected = final(await baseline.result(timeout=30))
    assert expected == (
        "Analyze Q4 market trends => found 10 sources on Q4 pricing | found 14 sources on "
        "Q4 competitors | pricing: trending up | competitors: trending up | found 9 sources "
        "on Q4 demand"
    )

    run_id = rid()
    await mark_gated(counters, run_id, "tool:c4", "tool:c5")  # hold the run after the 3rd tool
    handle = await client.submit("oa-research", "Analyze Q4 market trends", run_id=run_id)
    await eventually(lambda: at_least(tool_steps_done(client, run_id), 3), timeout=30)
    assert await has_all(client, run_id, "tool:c1", "tool:c2", "tool:c3")
    a.kill()
    b = await oa_workers("b")
    await open_gate(counters, run_id, "tool:c4", "tool:c5")

    assert final(await outcome(handle, b)) == expected
    assert await model_log(counters, run_id) == ["model:1", "model:2", "model:3"]
    for i in range(1, 6):
        assert await execs(counters, run_id, f"tool:c{i}") == 1, f"tool c{i} ran again"
    entries = await journal(client, run_id)
    keys = [je.entry.key for je in entries if isinstance(je.entry, StepDone | StepError)]
    assert sorted(keys) == sorted(RESEARCH_STEPS)  # each journaled once, nothing failed
    who = step_owners(entries)
    assert {k for k, w in who.items() if w == "a"} == {
        "model:1",
        "model:2",
        "tool:c1",
        "tool:c2",
        "tool:c3",
    }
    assert {k for k, w in who.items() if w == "b"} == {"tool:c4", "tool:c5", "model:3"}
    assert owners(entries) == ["a", "b"]
    model_steps = [je.entry for je in entries if isinstance(je.entry, StepDone)]
    assert all(e.name == "RedisScriptedModel" for e in model_steps if e.kind == "model")


# -- streaming across a crash ------------------------------------------------------------


@pytest.mark.slow
async def test_streamed_run_events_followed_across_a_crash(
    client: Client, oa_workers: WorkerFactory, supervisor: Any, counters: aioredis.Redis
) -> None:
    a = await oa_workers("a")
    run_id = rid()
    await mark_gated(counters, run_id, "tool:c4", "tool:c5")
    handle = await client.submit("oa-research-stream", "Analyze Q4 market trends", run_id=run_id)
    follower = asyncio.create_task(collect_events(handle.events()))
    await eventually(lambda: at_least(tool_steps_done(client, run_id), 3), timeout=30)
    a.kill()
    b = await oa_workers("b")
    await open_gate(counters, run_id, "tool:c4", "tool:c5")
    result = final(await outcome(handle, b))
    events = await asyncio.wait_for(follower, timeout=30)

    assert result.startswith("Analyze Q4 market trends => found 10 sources")
    assert await model_log(counters, run_id) == ["model:1", "model:2", "model:3"]
    completed = Counter(ev.step for ev in events if ev.type == "step.completed")
    assert completed == Counter(RESEARCH_STEPS)  # every model and tool event exactly once
    resumed = [ev for ev in events if ev.type == "run.resumed"]
    assert len(resumed) == 1 and resumed[0].worker == "b"
    assert resumed[0].data == {"journaled_steps": 5}
    # Deltas are live only: each model call's deltas come from the worker that made the call,
    # and the replay on b did not stream model:1 and model:2 again.
    step_worker = {ev.step: ev.worker for ev in events if ev.type == "step.completed"}
    # Answer text as model.delta (with "text"), the other raw model events as stream.item.
    deltas = [ev for ev in events if ev.type == "model.delta"]
    items = [ev for ev in events if ev.type == "stream.item"]
    assert {ev.step for ev in deltas} == {"model:3"}
    assert {ev.step for ev in items} == {"model:1", "model:2", "model:3"}
    assert all(ev.worker == step_worker[ev.step] for ev in deltas + items)
    assert all(ev.data["mode"] == "raw_response_event" for ev in items)
    arguments = [
        ev for ev in items if ev.data["chunk"]["type"] == "response.function_call_arguments.delta"
    ]
    assert Counter(ev.step for ev in arguments) == Counter(
        {"model:1": 2, "model:2": 3}  # one delta per call's arguments
    )
    assert [ev.data["text"] for ev in deltas] == [result]  # one delta: the message
    assert events[-1].type == "run.completed"
    assert events.index(resumed[0]) > max(
        events.index(ev) for ev in events if ev.worker == "a" and ev.type == "step.completed"
    )


# -- handoff, guardrails and structured output across a crash ----------------------------


@pytest.mark.slow
async def test_handoff_guardrails_and_structured_output_survive_a_crash(
    client: Client, oa_workers: WorkerFactory, supervisor: Any, counters: aioredis.Redis
) -> None:
    a = await oa_workers("a")
    run_id = rid()
    await mark_gated(counters, run_id, "tool:k1")  # the specialist's tool, after the handoff
    handle = await client.submit("oa-triage", "How did Q4 go?", run_id=run_id)
    await eventually(
        lambda: has_all(client, run_id, "model:1", "guardrail:topic_check", "handoff:1", "model:2"),
        timeout=30,
    )
    a.kill()
    b = await oa_workers("b")
    await open_gate(counters, run_id, "tool:k1")

    assert final(await outcome(handle, b)) == {"summary": "facts about Q4", "score": 2}
    log = await model_log(counters, run_id)
    # The guardrail's own agent made its model call inside the guardrail step.
    assert Counter(log) == Counter(["model:1", "guardrail:topic_check", "model:2", "model:3"])
    for key in ("guardrail:topic_check", "handoff:1", "tool:k1", "guardrail:score_check"):
        assert await execs(counters, run_id, key) == 1, f"{key} ran again"
    entries = await journal(client, run_id)
    kinds = {je.entry.key: je.entry.kind for je in entries if isinstance(je.entry, StepDone)}
    assert kinds == {
        "model:1": "model",
        "guardrail:topic_check": "guardrail",
        "handoff:1": "handoff",
        "model:2": "model",
        "tool:k1": "tool",
        "model:3": "model",
        "guardrail:score_check": "guardrail",
    }
    assert step_owners(entries)["model:3"] == "b"


@pytest.mark.slow
async def test_tripped_input_guardrail_fails_the_run(
    client: Client, oa_workers: WorkerFactory
) -> None:
    a = await oa_workers("a")
    handle = await client.submit("oa-triage", "Share a cooking recipe")
    with pytest.raises(RunFailed) as info:
        await outcome(handle, a)
    assert info.value.error_type == "InputGuardrailTripwireTriggered"
    keys = await done_keys(client, handle.run_id)
    # The SDK runs parallel guardrails alongside the first turn (its handoff included), but
    # the specialist never gets to call its model.
    assert "guardrail:topic_check" in keys and "model:2" not in keys


# -- an agent used as a tool: nested runs with their own scopes --------------------------


@pytest.mark.slow
async def test_agent_as_tool_nested_runs_resume_inside_their_scopes(
    client: Client, oa_workers: WorkerFactory, supervisor: Any, counters: aioredis.Redis
) -> None:
    a = await oa_workers("a")
    run_id = rid()
    await mark_gated(counters, run_id, "tool:b1/tool:w1", "tool:b2/tool:w1")
    handle = await client.submit("oa-editor", "Write two drafts", run_id=run_id)
    await eventually(
        lambda: has_all(client, run_id, "model:1", "tool:b1/model:1", "tool:b2/model:1"),
        timeout=30,
    )
    a.kill()
    b = await oa_workers("b")
    await open_gate(counters, run_id, "tool:b1/tool:w1", "tool:b2/tool:w1")

    result = final(await outcome(handle, b))
    assert result == "draft on facts about pricing + draft on facts about churn"
    nested = [f"tool:{b}/{k}" for b in ("b1", "b2") for k in ("model:1", "tool:w1", "model:2")]
    assert sorted(await done_keys(client, run_id)) == sorted(["model:1", "model:2", *nested])
    assert Counter(await model_log(counters, run_id)) == Counter(
        ["model:1", "model:2"] + [k for k in nested if "model" in k]
    )
    for b in ("b1", "b2"):
        assert await execs(counters, run_id, f"tool:{b}/tool:w1") == 1


# -- a changed agent is caught on resume -------------------------------------------------


@pytest.mark.slow
async def test_tool_renamed_between_crash_and_resume_is_nondeterminism(
    client: Client, oa_workers: WorkerFactory, supervisor: Any, counters: aioredis.Redis
) -> None:
    a = await oa_workers("a")
    run_id = rid()
    await mark_gated(counters, run_id, "tool:v2")
    handle = await client.submit("oa-versioned", "Q4", run_id=run_id)
    await eventually(lambda: has_all(client, run_id, "model:1", "tool:v1", "model:2"), timeout=30)
    a.kill()
    b = await oa_workers("b", TOOL_NAME="web_search")  # the new deployment renamed the tool
    await open_gate(counters, run_id, "tool:v2")

    with pytest.raises(RunFailed) as info:
        await outcome(handle, b)
    assert info.value.error_type == "NonDeterminismError"
    message = info.value.message
    assert "'model:1'" in message
    assert "'search' no longer offered" in message and "'web_search' newly offered" in message
    assert await execs(counters, run_id, "tool:v1") == 1


# -- tool approval: an interruption becomes a durable wait for a signal -----------------


async def waiting(client: Client, run_id: str) -> bool:
    return any(isinstance(je.entry, WaitStarted) for je in await journal(client, run_id))


@pytest.mark.slow
async def test_tool_approval_waits_for_a_signal_across_a_crash(
    client: Client, oa_workers: WorkerFactory, supervisor: Any, counters: aioredis.Redis
) -> None:
    a = await oa_workers("a")
    handle = await client.submit("oa-mailer", "Mail the Q4 report")
    await eventually(lambda: waiting(client, handle.run_id), timeout=30)
    # Live events leave in batches: a kill at once could drop the announcement (the
    # journaled request, which pending_approvals() reads, is never lost).
    await eventually(lambda: _announced(handle), timeout=30)
    assert await execs(counters, handle.run_id, "tool:m1") == 0  # not before approval
    a.kill()
    b = await oa_workers("b")
    [request] = await handle.pending_approvals()
    args = {"to": "cfo@example.com", "body": "Q4"}
    assert (request.call_id, request.tool, request.arguments) == ("m1", "send_email", args)
    assert request.args_hash == args_hash(args)
    await handle.approve("m1", tool="send_email", args_hash=request.args_hash)

    assert final(await outcome(handle, b)) == "done: sent to cfo@example.com"
    assert await model_log(counters, handle.run_id) == ["model:1", "model:2"]
    assert await execs(counters, handle.run_id, "tool:m1") == 1
    events = [ev async for ev in handle.events(follow=False)]
    requested = [ev for ev in events if ev.type == "approval.requested"]
    assert [ev.data["signal"] for ev in requested] == ["approval:m1"]
    assert requested[0].data["tool"] == "send_email"
    assert requested[0].data["args_hash"] == request.args_hash
    assert requested[0].data["expires_at"] is None


@pytest.mark.slow
async def test_tool_rejection_sends_the_message_to_the_model(
    client: Client, oa_workers: WorkerFactory, counters: aioredis.Redis
) -> None:
    a = await oa_workers("a")
    handle = await client.submit("oa-mailer", "Mail the Q4 report")
    await eventually(handle.pending_approvals, timeout=30)
    await handle.reject("m1", "not to the CFO")
    assert final(await outcome(handle, a)) == "done: not to the CFO"
    assert await execs(counters, handle.run_id, "tool:m1") == 0


@pytest.mark.slow
async def test_an_unbound_or_mismatched_approval_is_refused_and_the_run_waits_on(
    client: Client, oa_workers: WorkerFactory, counters: aioredis.Redis
) -> None:
    a = await oa_workers("a")
    handle = await client.submit("oa-mailer", "Mail the Q4 report")
    [request] = await eventually(handle.pending_approvals, timeout=30)
    stale = args_hash({"to": "ceo@example.com", "body": "Q4"})
    with pytest.raises(ApprovalRefusedError) as info:
        await handle.approve("m1", args_hash=stale)
    assert info.value.reason == "wrong_hash"
    with pytest.raises(ApprovalRefusedError) as info:
        await handle.approve("m2")
    assert info.value.reason == "unknown_call"

    await handle.signal("approval:m1", True)  # the old, unbound form
    await handle.signal("approval:m1", {**approval_payload(request, True), "args_hash": stale})
    refused = await eventually(lambda: _refused(handle, 2), timeout=30)
    assert refused == ["unbound", "wrong_hash"]
    assert await handle.pending_approvals() == [request]
    assert await execs(counters, handle.run_id, "tool:m1") == 0

    await handle.approve("m1")
    assert final(await outcome(handle, a)) == "done: sent to cfo@example.com"
    assert await execs(counters, handle.run_id, "tool:m1") == 1


@pytest.mark.slow
async def test_an_expired_approval_request_rejects_the_call_for_the_model(
    client: Client, oa_workers: WorkerFactory, counters: aioredis.Redis
) -> None:
    a = await oa_workers("a")
    handle = await client.submit("oa-mailer-ttl", "Mail the Q4 report")
    [request] = await eventually(handle.pending_approvals, timeout=30)
    assert request.expires_at == pytest.approx(request.requested_at + 2.0)
    assert final(await outcome(handle, a)) == (
        "done: Not run: the approval request for 'send_email' expired before anyone approved it."
    )
    assert await execs(counters, handle.run_id, "tool:m1") == 0
    with pytest.raises(ApprovalRefusedError) as info:
        await handle.approve("m1")
    assert info.value.reason == "unknown_call"  # nothing is pending any more


@pytest.mark.slow
async def test_parallel_calls_needing_approval_are_all_pending_at_once(
    client: Client, oa_workers: WorkerFactory, counters: aioredis.Redis
) -> None:
    a = await oa_workers("a")
    handle = await client.submit("oa-two-mails", "Mail the Q4 report twice")

    async def both() -> list[str] | None:
        ids = [r.call_id for r in await handle.pending_approvals()]
        return ids if len(ids) == 2 else None

    assert await eventually(both, timeout=30) == ["m1", "m2"]
    await handle.reject("m2", "not the CEO")  # answered in any order
    await handle.approve("m1")
    assert final(await outcome(handle, a)) == "done: not the CEO | sent to cfo@example.com"
    assert await execs(counters, handle.run_id, "tool:m1") == 1
    assert await execs(counters, handle.run_id, "tool:m2") == 0


@pytest.mark.slow
async def test_a_resume_evaluates_needs_approval_again_under_the_new_policy(
    client: Client, oa_workers: WorkerFactory, supervisor: Any, counters: aioredis.Redis
) -> None:
    a = await oa_workers("a")  # no approval needed here: the tool starts at once
    run_id = rid()
    await mark_gated(counters, run_id, "tool:n1")
    handle = await client.submit("oa-memo", "Send the memo", run_id=run_id)
    await eventually(lambda: has_all(client, run_id, "model:1"), timeout=30)
    a.kill()  # the call was made without approval; the tool (gated) never finished

    # A deploy that requires approval for the tool: the resumed run asks before running it.
    b = await oa_workers("b", MEMO_APPROVAL="on")
    [request] = await eventually(handle.pending_approvals, timeout=30)
    assert (request.call_id, request.tool) == ("n1", "send_memo")
    assert await execs(counters, run_id, "tool:n1") == 0
    await handle.approve("n1")
    await open_gate(counters, run_id, "tool:n1")
    assert final(await outcome(handle, b)) == "done: memo to board@example.com"
    assert await execs(counters, run_id, "tool:n1") == 1


@pytest.mark.slow
async def test_a_resume_under_a_policy_that_dropped_the_approval_runs_the_call(
    client: Client, oa_workers: WorkerFactory, supervisor: Any, counters: aioredis.Redis
) -> None:
    a = await oa_workers("a", MEMO_APPROVAL="on")
    handle = await client.submit("oa-memo", "Send the memo")
    await eventually(handle.pending_approvals, timeout=30)
    a.kill()
    b = await oa_workers("b")  # the deploy no longer asks for approval of send_memo
    # The policy of the code that runs now decides: the journaled request is obsolete.
    assert final(await outcome(handle, b)) == "done: memo to board@example.com"
    assert await execs(counters, handle.run_id, "tool:n1") == 1


async def _announced(handle: Any) -> bool:
    return any([ev async for ev in handle.events(follow=False) if ev.type == "approval.requested"])


async def _refused(handle: Any, n: int) -> list[str] | None:
    reasons = [
        ev.data["reason"]
        async for ev in handle.events(follow=False)
        if ev.type == "approval.refused"
    ]
    return reasons if len(reasons) >= n else None


# -- the real OpenAI client: HTTP retries inside one journaled model step ----------------


class _FakeOpenAI(http.server.ThreadingHTTPServer):
    """Chat Completions on loopback: 429, then 500, then a completion."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _FakeOpenAIHandler)
        self.requests: list[str] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _FakeOpenAIHandler(http.server.BaseHTTPRequestHandler):
    server: _FakeOpenAI

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.server.lock:
            self.server.requests.append(self.path)
            n = len(self.server.requests)
        assert json.loads(body)["model"] == "gpt-fake"
        if n == 1:
            self._reply(429, {"error": {"message": "slow down", "type": "rate_limit"}})
        elif n == 2:
            self._reply(500, {"error": {"message": "boom", "type": "server_error"}})
        else:
            self._reply(
                200,
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "created": 0,
                    "model": "gpt-fake",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "hello from a fake"},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15},
                },
            )

    def _reply(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("retry-after-ms", "20")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def fake_openai() -> Iterator[_FakeOpenAI]:
    server = _FakeOpenAI()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.mark.slow
async def test_openai_client_retries_inside_one_journaled_model_step(
    client: Client, oa_workers: WorkerFactory, fake_openai: _FakeOpenAI
) -> None:
    a = await oa_workers("a", FAKE_OPENAI_URL=fake_openai.url)
    handle = await client.submit("oa-http", "Hi")
    assert final(await outcome(handle, a)) == "hello from a fake"
    assert fake_openai.requests == ["/v1/chat/completions"] * 3
    steps = [
        je.entry
        for je in await journal(client, handle.run_id)
        if isinstance(je.entry, StepDone | StepError)
    ]
    assert [(s.key, s.kind, s.name) for s in steps] == [("model:1", "model", "gpt-fake")]
    assert isinstance(steps[0], StepDone)
    assert (steps[0].input_tokens, steps[0].output_tokens) == (11, 4)


# -- pure parts (no servers) -------------------------------------------------------------


def test_exports() -> None:
    assert oa.__all__ == [
        "DurableAgentRunner",
        "DurableModel",
        "DurableModelProvider",
        "DurableRunResultStreaming",
        "SessionHistoryError",
        "StalwartSession",
        "StepRawResponsesStreamEvent",
        "durable_run_config",
    ]


def test_model_response_round_trip_keeps_the_next_turn_input() -> None:
    response = ModelResponse(
        output=[
            function_call("search", {"query": "Q4"}, call_id="c1"),
            assistant_message("done", item_id="msg_1"),
        ],
        usage=Usage(requests=1, input_tokens=7, output_tokens=3, total_tokens=10),
        response_id="resp_1",
    )
    rebuilt = load_response(dump_response(response))
    assert rebuilt.to_input_items() == response.to_input_items()
    assert isinstance(rebuilt.output[1], ResponseOutputMessage)
    assert rebuilt.usage == response.usage and rebuilt.response_id == "resp_1"


def test_fingerprint_input_ignores_volatile_fields() -> None:
    a = [{"role": "user", "content": "hi", "id": "msg_a"}, {"type": "x", "created_at": 1}]
    b = [{"role": "user", "content": "hi", "id": "msg_b"}, {"type": "x", "created_at": 2}]
    assert without_volatile(a) == without_volatile(b)


def test_tool_outputs_keep_what_the_model_sees() -> None:
    class Thing:
        def __str__(self) -> str:
            return "a thing"

    assert dump_tool_output("x", typed=False) == "x"
    assert dump_tool_output({"a": 1}, typed=False) == {"a": 1}
    assert dump_tool_output(Thing(), typed=False) == "a thing"
    assert dump_tool_output((1, 2), typed=False) == "(1, 2)"


# -- deserialization safety: a journal entry never makes a worker import or build a type ------


def _crafted_response(path: str) -> dict[str, Any]:
    item = assistant_message("pwned", item_id="msg_1")
    data = dump_response(ModelResponse(output=[item], usage=Usage(), response_id=None))
    data["output"][0]["t"] = path
    return data


@pytest.mark.parametrize(
    "path",
    [f"{MARKER_MODULE}:Evil", "os:system", "subprocess:Popen", "antigravity:X", "builtins:eval"],
)
def test_an_output_item_naming_a_type_off_the_allow_list_is_refused(path: str) -> None:
    loaded = set(sys.modules)
    with pytest.raises(DisallowedTypeError) as refused:
        load_response(_crafted_response(path))
    assert refused.value.type_name == path
    assert "not written by Stalwart" in str(refused.value)
    assert set(sys.modules) - loaded == set()


def test_an_unknown_sdk_class_name_is_rebuilt_from_its_data_without_an_import() -> None:
    # Modules of the trusted packages that a worker has not imported: naming one must not
    # import it (its top-level code would run); the item is rebuilt by its "type" field.
    for module in ("agents.realtime", "openai.types.beta.realtime"):
        assert module not in sys.modules
        rebuilt = load_response(_crafted_response(f"{module}:Anything"))
        assert module not in sys.modules
        assert isinstance(rebuilt.output[0], ResponseOutputMessage)


@pytest.mark.slow
async def test_a_crafted_model_step_fails_the_resumed_run_without_importing_anything(
    client: Client, oa_workers: WorkerFactory, tmp_path: Any
) -> None:
    marker = tmp_path / "imported"
    await oa_workers("a", **{MARKER_ENV: str(marker)})
    run_id = rid()
    await (await client.submit("oa-research", "Analyze Q4", run_id=run_id)).result(timeout=30)
    entry = next(
        je.entry
        for je in await journal(client, run_id)
        if isinstance(je.entry, StepDone) and je.entry.key == "model:1"
    )
    result = decode_value(entry.result)
    result["response"]["output"][0]["t"] = "os:system"
    # Someone who can write Redis rewrites the model step; a worker replays it.
    await tamper_step(client, run_id, "model:1", result)
    with pytest.raises(RunFailed) as failed:
        await (await client.fork(run_id, at="model:1")).result(timeout=30)

    assert failed.value.error_type == "DisallowedTypeError"
    assert "'os:system'" in failed.value.message
    assert not marker.exists()


# -- one context per run ----------------------------------------------------------------


@pytest.fixture
def visits_runner(client: Client) -> Iterator[oa.DurableAgentRunner]:
    from tests.adapters.openai_apps import visits

    visits._client = client
    yield visits
    visits._client = None


@pytest.mark.slow
async def test_each_run_gets_a_context_of_its_own(
    client: Client, oa_workers: WorkerFactory, visits_runner: oa.DurableAgentRunner
) -> None:
    await oa_workers("a")
    # Plain runs given the same template each see it fresh; so must durable ones.
    seen = [(await visits_runner.run("go")).final_output for _ in range(3)]
    assert seen == ['["visit1"]'] * 3

    # A per-run context travels as data; the caller's object gets the run's changes, as a
    # plain run's context does.
    mine: dict[str, Any] = {"visits": ["earlier"]}
    result = await visits_runner.run("go", context=mine)
    assert result.final_output == '["earlier", "visit1"]'
    assert mine == {"visits": ["earlier", "visit1"]}
    assert result.context_wrapper.context is mine


def test_per_run_inputs_that_cannot_travel_are_refused_with_what_to_do() -> None:
    from agents import Agent, RunHooks

    from stalwart import App

    @dataclasses.dataclass
    class Deps:
        lock: Any
        visits: list[str] = dataclasses.field(default_factory=list)

    runner = oa.DurableAgentRunner("t-refused", Agent(name="t"), context=Deps, app=App("t"))
    with pytest.raises(TypeError, match=r"DurableAgentRunner\(\.\.\., hooks=\.\.\.\)"):
        runner.request("hi", hooks=RunHooks())
    with pytest.raises(TypeError, match=r"session= is taken by DurableAgentRunner\.run"):
        runner.request("hi", session=object())
    with pytest.raises(TypeError, match="must be a Deps"):
        runner.request("hi", context={"visits": []})
    with pytest.raises(TypeError, match="context factory"):
        runner.request("hi", context=Deps(lock=threading.Lock()))
    wire = runner.request("hi", context=Deps(lock=None, visits=["a"]), max_turns=3)
    assert wire == {"input": "hi", "max_turns": 3, "context": {"lock": None, "visits": ["a"]}}
    plain = oa.DurableAgentRunner("t-plain", Agent(name="t"), app=App("t2"))
    with pytest.raises(TypeError, match="context_type="):
        plain.request("hi", context=Deps(lock=None))


def test_context_snapshots_restore_in_place_and_the_newest_wins() -> None:
    from pydantic import BaseModel

    from stalwart.adapters.openai_agents._context import ContextJournal

    class Airline(BaseModel):
        flight_number: str | None = None
        seat_number: str | None = None

    @dataclasses.dataclass
    class Cart:
        items: list[str] = dataclasses.field(default_factory=list)

    for live, changed, blank in (
        (Airline(), lambda c: setattr(c, "flight_number", "FLT-1"), Airline()),
        (Cart(), lambda c: c.items.append("x"), Cart()),
        ({}, lambda c: c.update(k=1), {}),
    ):
        journal = ContextJournal()
        first = journal.snapshot(live)
        changed(live)
        second = journal.snapshot(live)
        replay = ContextJournal()
        target = blank
        replay.restore(target, second)
        replay.restore(target, first)  # older: a parallel sibling replayed later
        assert target == live and target is blank


def test_sdk_errors_keep_their_type_and_message() -> None:
    from agents.exceptions import MaxTurnsExceeded, UserError

    from stalwart.adapters.openai_agents._result import sdk_error

    error = sdk_error(RunFailed("r1", "UserError", "Error running tool x: boom"))
    assert isinstance(error, UserError) and isinstance(error, RunFailed)
    assert str(error) == "Error running tool x: boom" and error.run_id == "r1"
    assert isinstance(sdk_error(RunFailed("r1", "MaxTurnsExceeded", "m")), MaxTurnsExceeded)
    other = RunFailed("r1", "ValueError", "v")
    assert sdk_error(other) is other


# -- tool guardrails run once, their verdicts replayed ----------------------------------


@pytest.mark.slow
async def test_tool_guardrails_are_steps_and_do_not_run_again(
    client: Client, oa_workers: WorkerFactory, supervisor: Any, counters: aioredis.Redis
) -> None:
    a = await oa_workers("a")
    run_id = rid()
    await mark_gated(counters, run_id, "tool:p3")
    handle = await client.submit("oa-prices", "Price apples and the secret sauce", run_id=run_id)
    await eventually(lambda: has_all(client, run_id, "model:2", "tool:p3:input:no_secrets"))
    a.kill()
    b = await oa_workers("b")
    await open_gate(counters, run_id, "tool:p3")

    # The rejected call's message reached the model, from the journal on the resumed worker.
    assert final(await outcome(handle, b)) == "apples: $10 | not allowed | pears: $10"
    assert await model_log(counters, run_id) == ["model:1", "model:2", "model:3"]
    for key in (
        "tool:p1:input:no_secrets",
        "tool:p1",
        "tool:p1:output:price_sane",
        "tool:p2:input:no_secrets",
        "tool:p3:input:no_secrets",
        "tool:p3",
        "tool:p3:output:price_sane",
    ):
        assert await execs(counters, run_id, key) == 1, f"{key} ran again"
    assert await execs(counters, run_id, "tool:p2") == 0  # rejected: never ran
    kinds = {e.key: e.kind for e in await entries_of(client, run_id, StepDone)}
    assert kinds["tool:p2:input:no_secrets"] == "guardrail"
    assert step_owners(await journal(client, run_id))["tool:p3:input:no_secrets"] == "a"
