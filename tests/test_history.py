"""History, replay and fork: pure functions on hand-built journals, then the CLI end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from stalwart import Client, Limits, Settings, _pricing
from stalwart.actors import App, RunContext, fingerprint
from stalwart.checkpoints import (
    ErrorInfo,
    Finished,
    JournalEntry,
    RunRecord,
    Started,
    StepAttempt,
    StepDone,
    StepError,
    StepIntent,
    WaitStarted,
    encode_value,
)
from stalwart.checkpoints._store import fork_entries
from stalwart.observability import build_history, format_history, history_json, replay_run
from tests.conftest import WorkerFactory
from tests.helpers import (
    collect_events,
    eventually,
    execs,
    gate_key,
    journal,
    journaled,
    open_gate,
    rid,
)
from tests.test_cli import Result, _env, run_cli

# --------------------------------------------------------------------------- journals by hand


def done(
    key: str,
    name: str,
    value: Any,
    *,
    fp: str = "",
    worker: str = "a",
    epoch: int = 3,
    at: float = 100.0,
    duration: float = 0.5,
    kind: str = "step",
    attempt: int = 1,
    model: str = "",
    tokens: tuple[int, int] = (0, 0),
) -> StepDone:
    return StepDone(
        key=key,
        kind=kind,
        name=name,
        fp=fp,
        result=encode_value(value),
        epoch=epoch,
        worker=worker,
        at=at,
        duration=duration,
        attempt=attempt,
        model=model,
        input_tokens=tokens[0],
        output_tokens=tokens[1],
    )


def numbered(*entries: Any) -> list[JournalEntry]:
    return [JournalEntry(seq=i + 1, entry=e) for i, e in enumerate(entries)]


def test_history_of_a_run_with_a_crash_retries_and_model_calls() -> None:
    err = ErrorInfo("ConnectionError", "reset")
    entries = numbered(
        Started(epoch=3, worker="a", at=100.0),
        done(
            "model:1",
            "gpt-4o",
            {"x": 1},
            kind="model",
            at=100.1,
            model="gpt-4o",
            tokens=(1000, 200),
        ),
        StepAttempt(
            key="tool:c1",
            kind="tool",
            name="search",
            fp="f",
            attempt=1,
            error=err,
            delay=1.0,
            epoch=3,
            worker="a",
            at=100.2,
            duration=0.1,
        ),
        Started(epoch=9, worker="b", at=105.0, resumed=True),
        done("tool:c1", "search", [1], kind="tool", worker="b", epoch=9, at=105.1, attempt=2),
        StepIntent(
            key="step:pay",
            kind="step",
            name="pay",
            fp="p",
            attempt=1,
            epoch=9,
            worker="b",
            at=105.3,
        ),
        StepError(
            key="step:pay",
            kind="step",
            name="pay",
            fp="p",
            error=ErrorInfo("ValueError", "declined", False),
            epoch=9,
            worker="b",
            at=105.3,
            duration=0.2,
        ),
        WaitStarted(key="signal:ok", until=0.0, signal="ok", epoch=9, worker="b", at=105.6),
        Finished(
            status="failed",
            epoch=9,
            worker="b",
            at=106.0,
            error=ErrorInfo("ValueError", "declined", False),
        ),
    )
    record = RunRecord(run_id="r1", agent="shop", status="failed", created_at=99.5)
    h = build_history("r1", entries, record)
    assert [(p.worker, p.epoch, p.resumed) for p in h.placements] == [
        ("a", 3, False),
        ("b", 9, True),
    ]
    rows = {s.key: s for s in h.steps}
    assert [s.key for s in h.steps] == ["model:1", "tool:c1", "step:pay", "signal:ok"]
    model = rows["model:1"]
    assert (model.outcome, model.input_tokens, model.output_tokens) == ("completed", 1000, 200)
    assert model.cost_usd == pytest.approx((1000 * 2.5 + 200 * 10.0) / 1e6)
    tool = rows["tool:c1"]
    assert (tool.attempts, tool.worker, tool.epoch, tool.outcome) == (2, "b", 9, "completed")
    assert [(e.attempt, e.type, e.worker) for e in tool.errors] == [(1, "ConnectionError", "a")]
    assert (rows["step:pay"].outcome, rows["step:pay"].error) == ("failed", "ValueError: declined")
    assert rows["signal:ok"].outcome == "waiting" and rows["signal:ok"].kind == "signal"
    assert (h.status, h.error_type, h.retries, h.input_tokens) == ("failed", "ValueError", 1, 1000)
    assert h.cost_usd == model.cost_usd and h.journal_entries == 9

    as_json = json.loads(json.dumps(history_json(h)))
    assert as_json["steps"][1]["errors"][0]["type"] == "ConnectionError"
    table = format_history(h).splitlines()
    assert table[0].startswith("run r1  agent shop  failed  4 step(s)")
    assert table[1].split() == [
        "seq",
        "at",
        "key",
        "kind",
        "worker",
        "epoch",
        "att",
        "duration",
        "outcome",
        "tokens",
        "in/out",
        "cost",
    ]
    assert [line.split()[2] for line in table[2:-1]] == [
        "run.started",
        "model:1",
        "tool:c1",
        "run.resumed",
        "step:pay",
        "signal:ok",
        "run.failed",
    ]
    assert "1000/200" in table[3] and "$0.004500" in table[3]
    assert table[-1] == "error: ValueError: declined"


def test_history_without_a_record_reads_the_journal_alone() -> None:
    h = build_history("r2", numbered(Started(epoch=1, worker="a", at=5.0)))
    assert (h.status, h.agent, h.created_at, h.steps) == ("running", "", 5.0, [])


def test_fork_keeps_the_prefix_and_drops_half_done_steps() -> None:
    entries = numbered(
        Started(epoch=1, worker="a", at=1.0),
        done("step:a", "a", 1),
        StepIntent(
            key="step:pay", kind="step", name="pay", fp="", attempt=1, epoch=1, worker="a", at=2.0
        ),
        WaitStarted(key="signal:x", until=0, signal="x", epoch=1, worker="a", at=2.0),
        done("step:b", "b", 2),
        done("step:pay", "pay", 3),
        done("step:c", "c", 4),
        Finished(status="completed", epoch=1, worker="a", at=3.0),
    )
    kept = fork_entries(entries, "step:b")
    assert kept is not None
    assert [(type(e).__name__, getattr(e, "key", "")) for e in kept] == [
        ("StepDone", "step:a"),
        ("StepDone", "step:b"),
    ]  # the intent's outcome and the wait's end came later: they go live in the fork
    full = fork_entries(entries, "step:pay")
    assert full is not None
    assert [getattr(e, "key", "") for e in full] == ["step:a", "step:pay", "step:b", "step:pay"]
    assert fork_entries(entries, "step:nope") is None


# --------------------------------------------------------------------------- replay, offline


async def add(a: int, b: int) -> int:
    raise AssertionError("replay must not call step bodies")


def adder_app(
    *, second: int = 1, extra: bool = False, skip: bool = False, bump: int = 0, catch: bool = False
) -> App:
    """``adder`` as deployed (defaults), or changed in one way."""
    app = App("replay-tests")

    @app.agent("adder")
    async def adder(ctx: RunContext, n: int) -> int:
        x = await ctx.step("add", add, n, 1)
        if not skip:
            try:
                x = await ctx.step("add", add, x, second)
            except Exception:
                if not catch:
                    raise
        if extra:
            x = await ctx.step("double", add, x, x)
        return x + bump

    return app


def adder_journal(*, finish: str = "completed") -> list[JournalEntry]:
    entries: list[Any] = [
        Started(epoch=1, worker="a", at=1.0),
        done("step:add", "add", 2, fp=fingerprint("add", (1, 1), {})),
        done("step:add#2", "add", 3, fp=fingerprint("add", (2, 1), {})),
    ]
    if finish == "completed":
        entries.append(
            Finished(status="completed", epoch=1, worker="a", at=2.0, result=encode_value(3))
        )
    elif finish == "cancelled":
        entries.append(
            Finished(
                status="cancelled",
                epoch=1,
                worker="a",
                at=2.0,
                error=ErrorInfo("RunCancelled", "stop", False),
            )
        )
    return numbered(*entries)


def adder_record(status: str = "completed") -> RunRecord:
    return RunRecord(run_id="r1", agent="adder", status=status, input=encode_value(1))  # type: ignore[arg-type]


async def test_replay_of_unchanged_code_matches() -> None:
    report = await replay_run(adder_app(), adder_record(), adder_journal())
    assert report.matched, report.render()
    assert (report.steps_replayed, report.steps_journaled) == (2, 2)
    assert report.render().startswith("run r1 (agent adder, completed): MATCH")


@pytest.mark.parametrize(
    ("change", "step", "says"),
    [
        ({"second": 5}, "step:add#2", "different arguments"),
        ({"extra": True}, "step:double", "never executed"),
        ({"skip": True}, "", "step:add#2 were not asked for"),
        ({"bump": 1}, "", "different result"),
        ({"second": 5, "catch": True}, "step:add#2", "different arguments"),  # swallowed: still
    ],
    ids=["arguments", "new-step", "removed-step", "result", "swallowed"],
)
async def test_replay_of_changed_code_diverges(
    change: dict[str, Any], step: str, says: str
) -> None:
    report = await replay_run(adder_app(**change), adder_record(), adder_journal())
    assert not report.matched
    assert report.step == step
    assert says in report.divergence, report.render()
    assert "DIVERGED" in report.render()


async def test_replay_of_an_unfinished_or_cancelled_run_checks_what_is_journaled() -> None:
    running = await replay_run(
        adder_app(extra=True), adder_record("running"), adder_journal(finish="")
    )
    assert running.matched and running.partial, running.render()
    assert running.replayed == "stopped at step:double"
    cancelled = await replay_run(
        adder_app(extra=True), adder_record("cancelled"), adder_journal(finish="cancelled")
    )
    assert cancelled.matched, cancelled.render()
    # ...but a code change inside the journaled part is still found.
    changed = await replay_run(
        adder_app(second=7), adder_record("running"), adder_journal(finish="")
    )
    assert not changed.matched and changed.step == "step:add#2"


async def test_replay_compares_how_a_failed_run_failed() -> None:
    entries = numbered(
        Started(epoch=1, worker="a", at=1.0),
        done("step:add", "add", 2, fp=fingerprint("add", (1, 1), {})),
        StepError(
            key="step:add#2",
            kind="step",
            name="add",
            fp=fingerprint("add", (2, 1), {}),
            error=ErrorInfo("ValueError", "bad"),
            epoch=1,
            worker="a",
            at=1.5,
            duration=0.1,
        ),
        Finished(
            status="failed", epoch=1, worker="a", at=2.0, error=ErrorInfo("ValueError", "bad")
        ),
    )
    same = await replay_run(adder_app(), adder_record("failed"), entries)
    assert same.matched, same.render()
    assert same.replayed.startswith("failed: ValueError")
    now_ok = await replay_run(adder_app(catch=True), adder_record("failed"), entries)
    assert not now_ok.matched and "now completes" in now_ok.divergence


# --------------------------------------------------------------------------- the CLI, end to end


@pytest.fixture
def cli(settings: Settings, servers: Any, tmp_path: Path) -> Any:
    """``await cli("history", run_id, AGENT_VERSION="2")``: this test's servers, extra env."""
    assert settings.nats_url and settings.redis_url
    urls = ["--nats-url", settings.nats_url, "--redis-url", settings.redis_url]
    urls += ["--namespace", settings.namespace, "--lease-ttl", str(settings.lease_ttl)]
    base = _env(tmp_path, COUNTER_REDIS_URL=servers.redis_url)

    async def call(*args: str, timeout: float = 30.0, **env: str) -> Result:
        return await run_cli(*args, *urls, env={**base, **env}, timeout=timeout)

    return call


@pytest.mark.slow
async def test_history_cli_shows_the_crash_the_retries_and_the_tokens(
    cli: Any, client: Client, workers: WorkerFactory, supervisor: Any, counters: aioredis.Redis
) -> None:
    a = await workers("a")
    crashed = await client.submit("ten", {"pause_after": 3})

    await eventually(lambda: execs(counters, crashed.run_id, "step:s3"))
    await eventually(lambda: journaled(client, crashed.run_id, "step:s3"))
    a.kill()
    await open_gate(counters, crashed.run_id, "after")
    await workers("b")
    await crashed.result(timeout=30)
    chat = await client.submit("chatty", 2)
    await chat.result(timeout=20)
    flaky = await client.submit("flaky", 1)
    await flaky.result(timeout=30)

    res = await cli("history", crashed.run_id, "--json")
    assert res.code == 0, res
    h = json.loads(res.out)
    assert h["status"] == "completed" and h["agent"] == "ten"
    assert [(p["worker"], p["resumed"]) for p in h["placements"]] == [("a", False), ("b", True)]
    steps = h["steps"]
    assert [s["key"] for s in steps] == [f"step:s{i}" for i in range(1, 11)]
    assert {s["worker"] for s in steps[:3]} == {"a"} and {s["worker"] for s in steps[3:]} == {"b"}
    assert steps[0]["epoch"] < steps[3]["epoch"]
    assert all(s["outcome"] == "completed" and s["attempts"] == 1 for s in steps)

    table = await cli("history", crashed.run_id)
    assert table.code == 0, table
    lines = table.out.splitlines()
    assert "completed" in lines[0] and "10 step(s)" in lines[0] and "2 placement(s)" in lines[0]
    assert any(" run.resumed " in line and " b " in line for line in lines)

    tokens = json.loads((await cli("history", chat.run_id, "--json")).out)
    assert [
        (s["key"], s["kind"], s["input_tokens"], s["output_tokens"]) for s in tokens["steps"]
    ] == [
        ("model:1", "model", 60, 40),
        ("model:2", "model", 60, 40),
    ]
    assert tokens["cost_usd"] == pytest.approx(2 * (60 * 2.5 + 40 * 10.0) / 1e6)
    assert "$0.000550" in (await cli("history", chat.run_id)).out

    retried = json.loads((await cli("history", flaky.run_id, "--json")).out)["steps"][0]
    assert retried["attempts"] == 2 and retried["errors"][0]["type"] == "ConnectionError"

    missing = await cli("history", "no-such-run")
    assert missing.code == 4 and "unknown run" in missing.err and "Traceback" not in missing.err


async def test_replay_cli_matches_the_same_code_and_catches_a_change(
    cli: Any, client: Client, workers: WorkerFactory, counters: aioredis.Redis
) -> None:
    await workers(AGENT_VERSION="1")
    fast = await client.submit("fast", 4)
    assert await fast.result(timeout=20) == 15
    versioned = await client.submit("versioned", None)
    await open_gate(counters, versioned.run_id, "after")
    assert await versioned.result(timeout=20) == 2

    same = await cli("replay", fast.run_id, "tests.apps:app")
    assert same.code == 0, same
    assert "MATCH" in same.out and "3 of 3 journaled step(s)" in same.out
    # `versioned` waits on a gate outside its steps: open it for each replay.
    await counters.lpush(gate_key(versioned.run_id, "after"), "replay")
    v1 = await cli("replay", versioned.run_id, "tests.apps:app", AGENT_VERSION="1")
    assert v1.code == 0, v1

    v2 = await cli("replay", versioned.run_id, "tests.apps:app", "--json", AGENT_VERSION="2")
    assert v2.code == 1, v2
    report = json.loads(v2.out)
    assert report["matched"] is False and report["step"] == "step:a"
    assert "different arguments" in report["divergence"]
    text = await cli("replay", versioned.run_id, "tests.apps:app", AGENT_VERSION="2")
    assert text.code == 1 and "DIVERGED at step step:a" in text.out, text
    # Nothing ran: the step bodies count their executions, and replay called none.
    assert await execs(counters, fast.run_id, "step:q") == 1
    assert await execs(counters, versioned.run_id, "step:a") == 1

    bad_app = await cli("replay", fast.run_id, "tests.no_such_module:app")
    assert bad_app.code == 2 and "cannot import" in bad_app.err, bad_app


async def test_fork_cli_reuses_the_journal_up_to_the_step_and_goes_live(
    cli: Any, client: Client, workers: WorkerFactory, counters: aioredis.Redis
) -> None:
    await workers("w")
    src = await client.submit("ten", {})
    assert await src.result(timeout=20) == 550

    res = await cli("fork", src.run_id, "--at", "s5", "--run-id", "forked-" + rid()[:8], "--wait")
    assert res.code == 0, res
    out = json.loads(res.out)
    new = out["run_id"]
    assert new.startswith("forked-") and out["result"] == 550
    for i in range(1, 11):  # steps 1-5 came from the journal, 6-10 ran in the new run
        assert await execs(counters, new, f"step:s{i}") == (i > 5), i
    entries = await journal(client, new)
    marker = entries[0].entry
    assert isinstance(marker, Started) and marker.worker == f"fork:{src.run_id}@step:s5"
    assert [type(je.entry).__name__ for je in entries] == (
        ["Started"] + ["StepDone"] * 5 + ["Started"] + ["StepDone"] * 5 + ["Finished"]
    )
    record = await client.handle(new).status()
    assert (record.agent, record.status, record.decode_input()) == ("ten", "completed", {})
    history = json.loads((await cli("history", new, "--json")).out)
    assert [s["key"] for s in history["steps"]] == [f"step:s{i}" for i in range(1, 11)]
    assert " run.forked " in (await cli("history", new)).out
    accepted = (await collect_events(client.handle(new).events(follow=False)))[0]
    assert (accepted.type, accepted.data) == (
        "run.accepted",
        {"agent": "ten", "forked_from": src.run_id, "at": "step:s5"},
    )

    nothing = await cli("fork", src.run_id, "--at", "step:nope")
    assert nothing.code == 2, nothing
    assert "no completed or failed step 'step:nope'" in nothing.err and "step:s1" in nothing.err
    taken = await cli("fork", src.run_id, "--at", "step:s1", "--run-id", new)
    assert taken.code == 2 and "already taken" in taken.err, taken
    unknown = await cli("fork", "no-such-run", "--at", "step:s1")
    assert unknown.code == 4 and "unknown run" in unknown.err, unknown


# -- pricing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prices", "model", "expected"),
    [
        (None, "gpt-4o", (1000 * 2.50 + 100 * 10.00) / 1e6),
        (None, "openai:gpt-4o-mini", (1000 * 0.15 + 100 * 0.60) / 1e6),  # longest name inside
        (None, "gpt-4o-2024-08-06", (1000 * 2.50 + 100 * 10.00) / 1e6),
        (None, "acme-large", 0.0),  # unlisted: free, silently
        ({"acme-large": (3.0, 15.0)}, "acme-large", (1000 * 3.0 + 100 * 15.0) / 1e6),
        ({"acme-large": (3.0, 15.0)}, "gpt-4o", 0.0),  # a table replaces the defaults
    ],
)
def test_one_price_rule_for_limits_and_history(
    prices: dict[str, tuple[float, float]] | None, model: str, expected: float
) -> None:
    assert _pricing.cost(prices, model, 1000, 100) == pytest.approx(expected)
    limits = Limits() if prices is None else Limits(prices=prices)
    assert limits.cost(model, 1000, 100) == pytest.approx(expected)
