"""The wire and storage protocols, each spelled once: message ids, subjects, keys, the fence."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from stalwart.adapters.langgraph import _scripts as lg_scripts
from stalwart.broker import MIN_SERVER_VERSION, Names
from stalwart.broker._names import RESUME_CAUSES, msg_id_run, resume_msg_id, submit_msg_id
from stalwart.checkpoints import (
    CheckpointStore,
    Fence,
    KeySchema,
    RunKeys,
    RunStore,
    _scripts,
    fenced,
)
from stalwart.checkpoints._fence import FENCE
from stalwart.checkpoints._runs import read_claim
from stalwart.errors import ConfigurationError, LeaseLost
from stalwart.testing import MIN_NATS_VERSION

# -- message ids ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cause", "epoch", "msg_id"),
    [
        ("resume", 7, "r1:resume:7"),  # lost owner: supervisors and a draining worker alike
        ("timer", 7, "r1:timer:7"),
        ("wake", 7, "r1:wake:7"),  # the passivating owner's own recheck
        ("signal", 7, "r1:signal:7"),
        ("cancel", 7, "r1:cancel:7"),
    ],
)
def test_resume_msg_id_table(cause: str, epoch: int, msg_id: str) -> None:
    assert resume_msg_id("r1", cause, epoch) == msg_id  # type: ignore[arg-type]
    assert msg_id_run(msg_id) == "r1"


def test_one_resume_per_cause_and_epoch() -> None:
    ids = {resume_msg_id("r1", cause, epoch) for cause in RESUME_CAUSES for epoch in (1, 2)}
    # Distinct per cause and per epoch: no cause suppresses another, no epoch a later one.
    assert len(ids) == len(RESUME_CAUSES) * 2
    assert resume_msg_id("r1", "resume", 3) == resume_msg_id("r1", "resume", 3)
    # Never the submission's id, which a worker reads as the run's own request.
    assert submit_msg_id("r1") not in ids


def test_resume_msg_id_refuses_an_unknown_cause() -> None:
    with pytest.raises(ValueError, match="unknown resume cause 'poke'"):
        resume_msg_id("r1", "poke", 1)  # type: ignore[arg-type]


def test_submission_id_is_the_bare_run_id() -> None:
    assert submit_msg_id("r1") == "r1"
    assert msg_id_run(submit_msg_id("r1")) == "r1"


# -- subjects -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("built", "expected"),
    [
        (Names("ns").lease_subject("r1"), "$KV.NS_LEASES.run.r1"),
        (Names("ns").lease_subject("lead", "supervisor."), "$KV.NS_LEASES.supervisor.lead"),
        (Names("ns").lease_key("r1"), "run.r1"),
        (Names("ns").worker_subject("w1"), "$KV.NS_WORKERS.w1"),
        (Names("ns").lease_stream, "KV_NS_LEASES"),
        (Names("ns").kv_subject("NS_AGENTS"), "$KV.NS_AGENTS.>"),
        (Names("ns").signals_subject("r1"), "ns.signals.r1"),
        (
            Names("ns").max_deliveries_advisories,
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.NS_RUNS.*",
        ),
    ],
)
def test_subjects(built: str, expected: str) -> None:
    assert built == expected


def test_minimum_nats_version_is_defined_once() -> None:
    assert MIN_NATS_VERSION is MIN_SERVER_VERSION
    assert MIN_SERVER_VERSION == (2, 11, 0)


# -- keys -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("built", "expected"),
    [
        (KeySchema("ns").run("r1").record, "ns:{r1}:run"),
        (KeySchema("ns").run("r1").journal, "ns:{r1}:journal"),
        (KeySchema("ns").run("r1").signals, "ns:{r1}:signals"),
        (KeySchema("ns").run("r1").own("lg:tasks"), "ns:{r1}:lg:tasks"),
        (KeySchema("ns").runs, "ns:runs"),
        (KeySchema("ns").active, "ns:active"),
        (KeySchema("ns").timers, "ns:timers"),
    ],
)
def test_key_schema(built: str, expected: str) -> None:
    assert built == expected


def test_script_keys_are_the_run_keys() -> None:
    run = KeySchema("ns").run("r1")
    assert KeySchema("ns").script_keys("r1") == [run.record, run.journal]


def test_store_keys_are_the_schema() -> None:
    store = CheckpointStore(aioredis.Redis(), "ns")  # no I/O until a command is sent
    run = RunKeys("ns", "r1")
    assert store.record_key("r1") == run.record
    assert store.journal_key("r1") == run.journal
    assert store.signals_key("r1") == run.signals
    assert (store.runs_key, store.active_key, store.timers_key) == (
        "ns:runs",
        "ns:active",
        "ns:timers",
    )


# -- the fence ------------------------------------------------------------------------------


def test_every_fenced_script_uses_the_one_fence() -> None:
    for script in (_scripts.APPEND, _scripts.FINISH, _scripts.PASSIVATE):
        assert script.startswith(FENCE)
    # The fence opens with a no-op write, so a replica refuses with READONLY before any read.
    assert FENCE.lstrip().startswith("redis.call('HDEL'")
    for script in (lg_scripts.PUT, lg_scripts.PUT_WRITES):
        assert script.startswith(FENCE)
    assert FENCE.count("'stale'") == 1
    assert fenced("return 1") == FENCE + "return 1"


def test_fence_keys_and_args() -> None:
    fence = Fence.of("ns", "r1", 4)
    assert fence.keys("ns:{r1}:lg:ids") == ["ns:{r1}:run", "ns:{r1}:lg:ids"]
    assert fence.args("a", b"b") == ["4", "a", b"b"]
    assert Fence.of("ns", "r1").args("a") == ["", "a"]  # bound to no run: unfenced


def test_fence_check() -> None:
    fence = Fence.of("ns", "r1", 4)
    assert fence.check([b"ok", b""]) == [b"ok", b""]
    with pytest.raises(LeaseLost, match=r"epoch 4 no longer owns the run \(current epoch 5\); x"):
        fence.check([b"stale", b"5"], lost="x")
    with pytest.raises(LeaseLost, match=r"current epoch none"):
        fence.check(["stale", ""])


# -- claims ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "outcome", "seq", "status"),
    [
        ([b"ok", b"3", b"", b"\xc0", b"", b""], "ok", 3, ""),
        ([b"terminal", b"completed"], "terminal", 0, "completed"),
        ([b"wrong_agent", b"other"], "wrong_agent", 0, "other"),
        ([b"stale", b"9"], "stale", 0, ""),
        ([b"missing"], "missing", 0, ""),
        ([b"poisoned", b"12"], "poisoned", 12, "why"),
    ],
)
def test_read_claim(reply: list[bytes], outcome: str, seq: int, status: str) -> None:
    claim = read_claim(reply, 1.0, "why", 4)
    assert (claim.outcome, claim.seq, claim.status) == (outcome, seq, status)
    # ok: the epoch claimed with; stale: the record's.
    assert claim.epoch == {"ok": 4, "stale": 9, "poisoned": 4}.get(outcome, 0)


# -- what agent code sees -------------------------------------------------------------------


async def test_run_store_is_one_runs_view() -> None:
    store = CheckpointStore(aioredis.Redis(), "ns")
    view = RunStore(store, "r1", 3)
    assert view.keys == RunKeys("ns", "r1")
    assert view.fence == Fence(RunKeys("ns", "r1"), 3)
    assert (view.ns, view.redis, view.retry_for) == ("ns", store.redis, store.retry_for)
    assert not hasattr(view, "claim") and not hasattr(view, "request_cancel")
    with pytest.raises(ConfigurationError, match="own journal only"):
        await view.read_journal("r2")
