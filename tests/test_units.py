"""Unit tests of pure functions and small pieces; the store and lease tests use real servers."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import TYPE_CHECKING, Any

import msgspec
import pytest

from stalwart._ids import check_agent_name, check_namespace, check_run_id
from stalwart.actors import App, RunContext, fingerprint
from stalwart.broker import Broker, Lease, LeaseManager, Names, check_server_version
from stalwart.checkpoints import (
    CheckpointStore,
    ErrorInfo,
    Finished,
    JournalConflict,
    RunRecord,
    Started,
    StepDone,
    StepError,
    decode_entry,
    decode_value,
    encode_entry,
    encode_value,
)
from stalwart.checkpoints._entries import record_from_hash
from stalwart.config import Settings
from stalwart.errors import (
    ConfigurationError,
    InvalidRequestError,
    LeaseLost,
    ServerVersionError,
    UnknownAgentError,
)
from stalwart.supervisor import Verdict, judge
from tests.conftest import Servers, eventually, step_done

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

# --------------------------------------------------------------------------- fingerprint


class _Opaque:
    """Something msgpack cannot encode, of a type other than ``object``."""


def test_fingerprint_same_name_and_args_same_hash() -> None:
    a = fingerprint("search", ("q", 3), {"limit": 10})
    b = fingerprint("search", ("q", 3), {"limit": 10})
    assert a == b
    assert isinstance(a, str) and len(a) == 24  # blake2b, 12 bytes, hex


def test_fingerprint_ignores_dict_key_order() -> None:
    a = fingerprint("t", ({"x": 1, "y": {"p": 1, "q": 2}},), {"a": 1, "b": 2})
    b = fingerprint("t", ({"y": {"q": 2, "p": 1}, "x": 1},), {"b": 2, "a": 1})
    assert a == b


def test_fingerprint_different_args_or_name_differ() -> None:
    base = fingerprint("t", (1, 2), {})
    assert fingerprint("t", (1, 3), {}) != base
    assert fingerprint("t", (1, 2), {"k": 1}) != base
    assert fingerprint("u", (1, 2), {}) != base
    assert fingerprint("t", (2, 1), {}) != base


def test_fingerprint_unencodable_objects_count_by_type_only() -> None:
    a = fingerprint("t", (object(),), {"client": object()})
    b = fingerprint("t", (object(),), {"client": object()})
    assert a == b
    # ...but the type does take part.
    assert fingerprint("t", (_Opaque(),), {"client": object()}) != a


# --------------------------------------------------------------------------- judge


def _record(status: str, epoch: int = 3) -> RunRecord:
    return RunRecord(run_id="r1", agent="a", status=status, epoch=epoch)  # type: ignore[arg-type]


def test_judge_forgets_unknown_runs() -> None:
    assert judge(None, None) == Verdict("forget")
    assert judge(None, "w1").action == "forget"


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled"])
def test_judge_forgets_terminal_runs(status: str) -> None:
    assert judge(_record(status), None).action == "forget"
    assert judge(_record(status), "w1").action == "forget"


def test_judge_replaces_running_run_without_lease_holder() -> None:
    assert judge(_record("running", epoch=7), None) == Verdict("replace", 7)


def test_judge_leaves_running_run_with_holder_alone() -> None:
    assert judge(_record("running", epoch=7), "w1").action == "none"


def test_judge_leaves_accepted_runs_to_jetstream() -> None:
    assert judge(_record("accepted", epoch=0), None).action == "none"
    assert judge(_record("accepted", epoch=0), "w1").action == "none"


# --------------------------------------------------------------------------- run records


def test_record_from_empty_hash_is_none() -> None:
    assert record_from_hash({}) is None


def test_record_from_full_hash_round_trip() -> None:
    raw = {
        b"run_id": b"run-1",
        b"agent": b"research",
        b"status": b"completed",
        b"epoch": b"12",
        b"worker": b"w-1",
        b"created_at": b"1700000000.5",
        b"updated_at": b"1700000001.25",
        b"input": bytes(encode_value({"q": "x"})),
        b"result": bytes(encode_value([1, 2, 3])),
        b"error_type": b"",
        b"error": b"",
        b"cancel": b"",
        b"trace": b'{"traceparent":"00-abc"}',
        b"finished_at": b"1700000001.25",
    }
    rec = record_from_hash(raw)
    assert rec is not None
    assert rec.run_id == "run-1"
    assert rec.agent == "research"
    assert rec.status == "completed"
    assert rec.terminal
    assert rec.epoch == 12
    assert rec.worker == "w-1"
    assert rec.created_at == 1700000000.5
    assert rec.updated_at == 1700000001.25
    assert rec.decode_input() == {"q": "x"}
    assert rec.decode_result() == [1, 2, 3]
    assert rec.trace == '{"traceparent":"00-abc"}'
    assert rec.error_type == rec.error == rec.cancel == ""


def test_record_from_minimal_hash_defaults() -> None:
    rec = record_from_hash({b"run_id": b"r", b"agent": b"a", b"status": b"running"})
    assert rec is not None
    assert rec.status == "running" and not rec.terminal
    assert rec.epoch == 0
    assert rec.input is None and rec.result is None
    assert rec.decode_result() is None


def test_record_from_hash_with_bad_status_raises() -> None:
    with pytest.raises(ValueError, match="exploded"):
        record_from_hash({b"run_id": b"r", b"agent": b"a", b"status": b"exploded"})


# --------------------------------------------------------------------------- journal codecs


_RESULT = encode_value({"answer": 42, "items": ["a", "b"]})


@pytest.mark.parametrize(
    "entry",
    [
        Started(epoch=3, worker="w1", at=1.5),
        Started(epoch=4, worker="w2", at=2.5, resumed=True),
        StepDone(
            key="step:q#2",
            kind="step",
            name="q",
            fp="abc",
            result=_RESULT,
            epoch=3,
            worker="w1",
            at=1.0,
            duration=0.25,
            attempt=2,
        ),
        StepError(
            key="tool:x",
            kind="tool",
            name="x",
            fp="def",
            error=ErrorInfo("ValueError", "bad", retryable=False),
            epoch=3,
            worker="w1",
            at=1.0,
            duration=0.5,
        ),
        Finished(status="completed", epoch=3, worker="w1", at=9.0, result=_RESULT),
        Finished(
            status="failed", epoch=3, worker="w1", at=9.0, error=ErrorInfo("RuntimeError", "boom")
        ),
        Finished(status="cancelled", epoch=0, worker="", at=9.0),
    ],
    ids=lambda e: type(e).__name__,
)
def test_entry_codec_round_trip(entry: Any) -> None:
    data = encode_entry(entry)
    decoded = decode_entry(data)
    assert type(decoded) is type(entry)
    assert decoded == entry
    assert encode_entry(decoded) == data


def test_finished_result_decodes_or_is_empty() -> None:
    fin = Finished(status="completed", epoch=1, worker="w", at=1.0, result=_RESULT)
    done = decode_entry(encode_entry(fin))
    assert isinstance(done, Finished)
    assert decode_value(done.result) == {"answer": 42, "items": ["a", "b"]}
    bare = decode_entry(encode_entry(Finished(status="failed", epoch=1, worker="w", at=1.0)))
    assert isinstance(bare, Finished)
    assert len(bare.result) == 0
    assert bare.error is None


def test_step_done_result_decodes_into_a_type() -> None:
    class Out(msgspec.Struct):
        answer: int
        items: list[str]

    entry = decode_entry(
        encode_entry(
            StepDone(
                key="k",
                kind="step",
                name="n",
                fp="f",
                result=_RESULT,
                epoch=1,
                worker="w",
                at=0.0,
                duration=0.0,
            )
        )
    )
    assert isinstance(entry, StepDone)
    assert decode_value(entry.result, Out) == Out(answer=42, items=["a", "b"])


# --------------------------------------------------------------------------- settings


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    import os

    for key in list(os.environ):
        if key.startswith("STALWART_"):
            monkeypatch.delenv(key)
    return monkeypatch


def test_settings_from_env_reads_stalwart_variables(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("STALWART_NATS_URL", "nats://example:4223")
    clean_env.setenv("STALWART_REDIS_URL", "redis://example:6380/1")
    clean_env.setenv("STALWART_NAMESPACE", "prod_eu")
    clean_env.setenv("STALWART_LEASE_TTL", "7")
    clean_env.setenv("STALWART_CONCURRENCY", "3")
    clean_env.setenv("STALWART_ACK_WAIT", "12.5")
    clean_env.setenv("STALWART_WORKER_ID", "w-9")
    s = Settings.from_env()
    assert s.nats_url == "nats://example:4223"
    assert s.redis_url == "redis://example:6380/1"
    assert s.namespace == "prod_eu"
    assert s.lease_ttl == 7
    assert s.concurrency == 3
    assert s.ack_wait == 12.5
    assert s.worker_id == "w-9"


def test_settings_from_env_defaults_without_variables(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("STALWART_LEASE_TTL", "")  # empty counts as unset
    assert Settings.from_env() == Settings()


def test_settings_overrides_win_and_none_overrides_are_ignored(
    clean_env: pytest.MonkeyPatch,
) -> None:
    clean_env.setenv("STALWART_NAMESPACE", "fromenv")
    clean_env.setenv("STALWART_LEASE_TTL", "7")
    s = Settings.from_env(namespace="fromarg", lease_ttl=None, concurrency=2)
    assert s.namespace == "fromarg"
    assert s.lease_ttl == 7
    assert s.concurrency == 2


@pytest.mark.parametrize(
    ("var", "value"),
    [("STALWART_LEASE_TTL", "soon"), ("STALWART_CONCURRENCY", "many"), ("STALWART_ACK_WAIT", "x")],
)
def test_settings_bad_env_value_raises(clean_env: pytest.MonkeyPatch, var: str, value: str) -> None:
    clean_env.setenv(var, value)
    with pytest.raises(ConfigurationError, match=var.removeprefix("STALWART_").lower()):
        Settings.from_env()


@pytest.mark.parametrize("ttl", [0, -1])
def test_settings_lease_ttl_below_one_raises(clean_env: pytest.MonkeyPatch, ttl: int) -> None:
    with pytest.raises(ConfigurationError, match="lease_ttl"):
        Settings(lease_ttl=ttl)
    with pytest.raises(ConfigurationError, match="lease_ttl"):
        Settings.from_env(lease_ttl=ttl)
    clean_env.setenv("STALWART_LEASE_TTL", str(ttl))
    with pytest.raises(ConfigurationError, match="lease_ttl"):
        Settings.from_env()


def test_settings_concurrency_below_one_raises() -> None:
    with pytest.raises(ConfigurationError, match="concurrency"):
        Settings(concurrency=0)


@pytest.mark.parametrize("ns", ["", "Prod", "1abc", "a.b", "a-b", "x" * 33])
def test_settings_invalid_namespace_raises(clean_env: pytest.MonkeyPatch, ns: str) -> None:
    with pytest.raises(ConfigurationError, match="namespace"):
        Settings(namespace=ns)
    with pytest.raises(ConfigurationError, match="namespace"):
        Settings.from_env(namespace=ns)


def test_settings_with_worker_id() -> None:
    generated = Settings().with_worker_id()
    assert generated.worker_id
    assert Settings().with_worker_id().worker_id != generated.worker_id
    fixed = Settings(worker_id="w1")
    assert fixed.with_worker_id() is fixed


# --------------------------------------------------------------------------- ids


@pytest.mark.parametrize("rid", ["a", "run-1", "Run_2-x", "0" * 128, uuid.uuid4().hex])
def test_check_run_id_accepts(rid: str) -> None:
    assert check_run_id(rid) == rid


@pytest.mark.parametrize("rid", ["", "a.b", "a b", " a", "x" * 129, "a/b", "a*", "a>", "é"])
def test_check_run_id_rejects(rid: str) -> None:
    with pytest.raises(InvalidRequestError, match="invalid run id"):
        check_run_id(rid)


def test_check_run_id_rejects_non_strings() -> None:
    with pytest.raises(InvalidRequestError):
        check_run_id(123)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["fast", "my_agent-2", "A" * 128])
def test_check_agent_name_accepts(name: str) -> None:
    assert check_agent_name(name) == name


@pytest.mark.parametrize("name", ["", "a.b", "a b", "x" * 129, "a>"])
def test_check_agent_name_rejects(name: str) -> None:
    with pytest.raises(ConfigurationError, match="invalid agent name"):
        check_agent_name(name)


def test_check_namespace() -> None:
    assert check_namespace("stalwart") == "stalwart"
    assert check_namespace("t" + "0" * 31) == "t" + "0" * 31
    with pytest.raises(ConfigurationError):
        check_namespace("t" + "0" * 32)


# --------------------------------------------------------------------------- server version


def test_check_server_version_refuses_2_9() -> None:
    with pytest.raises(ServerVersionError) as info:
        check_server_version("2.9.10", "nats://h:4222")
    msg = str(info.value)
    assert "2.9.10" in msg
    assert "2.11" in msg
    assert "TTL" in msg
    assert "nats://h:4222" in msg
    assert isinstance(info.value, ConfigurationError)


@pytest.mark.parametrize("version", ["2.10.22", "v2.10.0", "1.4.1", "2.9"])
def test_check_server_version_refuses_older(version: str) -> None:
    with pytest.raises(ServerVersionError, match=r"2\.11"):
        check_server_version(version)


@pytest.mark.parametrize("version", ["2.11.0", "2.15.1", "v2.12.3-beta", "2.11", "3.0.0"])
def test_check_server_version_accepts(version: str) -> None:
    assert check_server_version(version) is None


def test_check_server_version_unparseable() -> None:
    with pytest.raises(ServerVersionError, match="cannot parse"):
        check_server_version("banana")


# --------------------------------------------------------------------------- names


def test_names_with_custom_namespace() -> None:
    n = Names("acme_prod")
    assert n.runs_stream == "ACME_PROD_RUNS"
    assert n.events_stream == "ACME_PROD_EVENTS"
    assert n.lease_bucket == "ACME_PROD_LEASES"
    assert n.workers_bucket == "ACME_PROD_WORKERS"
    assert n.agents_bucket == "ACME_PROD_AGENTS"
    assert n.lease_stream == "KV_ACME_PROD_LEASES"
    assert n.workers_stream == "KV_ACME_PROD_WORKERS"
    assert n.runs_subject("research") == "acme_prod.runs.research"
    assert n.runs_wildcard == "acme_prod.runs.>"
    assert n.events_subject("r1") == "acme_prod.events.r1"
    assert n.events_wildcard == "acme_prod.events.>"
    assert n.rejected_subject("research") == "acme_prod.rejected.research"
    assert n.rejected_wildcard == "acme_prod.rejected.>"
    assert n.consumer("research") == "agent_research"
    assert n.lease_key("r1") == "run.r1"
    assert n.lease_subject("r1") == "$KV.ACME_PROD_LEASES.run.r1"
    assert n.worker_subject("w-1") == "$KV.ACME_PROD_WORKERS.w-1"


def test_names_default_namespace_differs() -> None:
    assert Names().runs_stream == "STALWART_RUNS"
    assert Names().events_subject("r") != Names("other").events_subject("r")


# --------------------------------------------------------------------------- App


class Query(msgspec.Struct):
    text: str
    limit: int = 3


async def _typed_agent(ctx: RunContext, q: Query) -> list[str]:
    return [q.text]


async def _untyped_agent(ctx, inp):  # type: ignore[no-untyped-def]
    return inp


def test_app_refuses_sync_function() -> None:
    app = App("t")

    def sync_agent(ctx: RunContext, inp: int) -> int:
        return inp

    with pytest.raises(ConfigurationError, match="async"):
        app.register("sync", sync_agent)  # type: ignore[arg-type]
    assert "sync" not in app.agents


@pytest.mark.parametrize("arity", [0, 1, 3])
def test_app_refuses_wrong_arity(arity: int) -> None:
    app = App("t")
    params = ", ".join(f"p{i}" for i in range(arity))
    scope: dict[str, Any] = {}
    exec(f"async def agent({params}):\n    return None", scope)
    with pytest.raises(ConfigurationError, match=rf"takes {arity} parameter"):
        app.register("bad", scope["agent"])


def test_app_refuses_duplicate_name() -> None:
    app = App("t")
    app.register("dup", _untyped_agent)
    with pytest.raises(ConfigurationError, match="twice"):
        app.register("dup", _typed_agent)
    assert app.get("dup").fn is _untyped_agent


def test_app_refuses_invalid_agent_name() -> None:
    with pytest.raises(ConfigurationError, match="invalid agent name"):
        App("t").register("a.b", _untyped_agent)


def test_app_takes_input_type_from_annotation() -> None:
    app = App("t")

    decorated = app.agent("typed")(_typed_agent)
    assert decorated is _typed_agent
    app.agent()(_untyped_agent)
    spec = app.get("typed")
    assert spec.name == "typed"
    assert spec.input_type is Query
    assert spec.result_type == list[str]
    untyped = app.get("_untyped_agent")
    assert untyped.input_type is Any
    assert untyped.result_type is Any


def test_app_get_unknown_agent_lists_registered_names() -> None:
    app = App("myapp")
    app.register("beta", _untyped_agent)
    app.register("alpha", _typed_agent)
    with pytest.raises(UnknownAgentError) as info:
        app.get("nope")
    msg = str(info.value)
    assert "nope" in msg
    assert "alpha, beta" in msg
    assert "myapp" in msg


def test_app_get_unknown_agent_of_empty_app() -> None:
    with pytest.raises(UnknownAgentError, match="none"):
        App("empty").get("nope")


# --------------------------------------------------------------------------- step keys


def test_run_context_next_key_scheme() -> None:
    ctx = RunContext(object())  # type: ignore[arg-type]  # next_key never touches the actor
    assert [ctx.next_key("a") for _ in range(3)] == ["a", "a#2", "a#3"]
    assert ctx.next_key("b") == "b"
    assert ctx.next_key("a") == "a#4"


def test_run_context_scoped_prefixes_keys() -> None:
    ctx = RunContext(object())  # type: ignore[arg-type]
    ctx.next_key("a")
    sub = ctx.scoped("sub")
    assert [sub.next_key("a") for _ in range(2)] == ["sub/a", "sub/a#2"]
    assert sub.scoped("inner").next_key("x") == "sub/inner/x"
    # The parent's counters are its own.
    assert ctx.next_key("a") == "a#2"


# --------------------------------------------------------------------------- CheckpointStore


@pytest.fixture
async def store(servers: Servers, namespace: str) -> AsyncIterator[CheckpointStore]:
    assert servers.redis_url
    s = await CheckpointStore.connect(servers.redis_url, namespace)
    yield s
    keys = [k async for k in s.redis.scan_iter(match=f"{namespace}:*")]
    if keys:
        await s.redis.delete(*keys)
    await s.close()


async def test_store_create_run_twice_returns_existing(store: CheckpointStore) -> None:
    rid = uuid.uuid4().hex
    assert await store.create_run(rid, "fast", encode_value(5)) is None
    assert await store.create_run(rid, "other", encode_value(6)) == ("accepted", "fast")
    rec = await store.get_run(rid)
    assert rec is not None
    assert (rec.status, rec.agent, rec.epoch) == ("accepted", "fast", 0)
    assert rec.decode_input() == 5  # the second create changed nothing
    assert rid in await store.active_runs()
    assert [r.run_id for r in await store.list_runs()] == [rid]


async def test_store_claim_append_fencing_and_finish(store: CheckpointStore) -> None:
    rid = uuid.uuid4().hex
    await store.create_run(rid, "fast", encode_value(5))

    claim = await store.claim(rid, agent="fast", input=encode_value(5), epoch=5, worker="w1")
    assert claim.outcome == "ok"
    assert claim.seq == 1
    assert decode_value(claim.input) == 5
    assert claim.cancel == ""
    rec = await store.get_run(rid)
    assert rec is not None and (rec.status, rec.epoch, rec.worker) == ("running", 5, "w1")

    stale = await store.claim(rid, agent="fast", input=encode_value(5), epoch=3, worker="w2")
    assert stale.outcome == "stale"
    rec = await store.get_run(rid)
    assert rec is not None and (rec.epoch, rec.worker) == (5, "w1")

    step = step_done("step:q", 5)
    assert await store.append(rid, 5, 2, step) == ""

    with pytest.raises(LeaseLost, match="epoch 4"):
        await store.append(rid, 4, 3, step_done("step:q#2", 6, epoch=4))

    with pytest.raises(JournalConflict):
        await store.append(rid, 5, 2, step_done("step:other", 99))

    # A retry of the same append after a lost reply: recognised, not written twice.
    assert await store.append(rid, 5, 2, step) == ""
    journal = await store.read_journal(rid)
    assert [je.seq for je in journal] == [1, 2]
    assert isinstance(journal[0].entry, Started)
    assert journal[0].entry.epoch == 5 and not journal[0].entry.resumed
    assert journal[1].entry == step

    assert await store.append(rid, 5, 3, step_done("step:q#2", 6)) == ""
    later = await store.read_journal(rid, after=1)
    assert [je.seq for je in later] == [2, 3]
    assert [je.seq for je in await store.read_journal(rid, after=3)] == []

    fin = Finished(status="completed", epoch=5, worker="w1", at=2.0, result=encode_value(11))
    await store.finish(rid, 5, 4, fin)
    rec = await store.get_run(rid)
    assert rec is not None
    assert rec.status == "completed" and rec.terminal
    assert rec.decode_result() == 11
    assert rid not in await store.active_runs()
    assert (await store.read_journal(rid))[-1].entry == fin

    after = await store.claim(rid, agent="fast", input=encode_value(5), epoch=9, worker="w2")
    assert after.outcome == "terminal"
    assert after.status == "completed"
    assert len(await store.read_journal(rid)) == 4
    assert await store.request_cancel(rid) == "terminal"


async def test_store_claim_by_newer_epoch_resumes(store: CheckpointStore) -> None:
    rid = uuid.uuid4().hex
    await store.create_run(rid, "fast", encode_value(1))
    await store.claim(rid, agent="fast", input=encode_value(1), epoch=5, worker="w1")
    await store.append(rid, 5, 2, step_done("step:q", 1))
    claim = await store.claim(rid, agent="fast", input=encode_value(1), epoch=8, worker="w2")
    assert claim.outcome == "ok" and claim.seq == 3
    journal = await store.read_journal(rid)
    resumed = journal[-1].entry
    assert isinstance(resumed, Started)
    assert resumed.resumed and resumed.epoch == 8 and resumed.worker == "w2"
    # The old owner is fenced out from now on.
    with pytest.raises(LeaseLost):
        await store.append(rid, 5, 4, step_done("step:q#2", 2))


async def test_store_finish_with_stale_epoch_raises(store: CheckpointStore) -> None:
    rid = uuid.uuid4().hex
    await store.create_run(rid, "fast", encode_value(1))
    await store.claim(rid, agent="fast", input=encode_value(1), epoch=5, worker="w1")
    with pytest.raises(LeaseLost):
        await store.finish(rid, 4, 2, Finished(status="completed", epoch=4, worker="w0", at=1.0))
    rec = await store.get_run(rid)
    assert rec is not None and rec.status == "running"


async def test_store_cancel_accepted_run_ends_it(store: CheckpointStore) -> None:
    rid = uuid.uuid4().hex
    await store.create_run(rid, "fast", encode_value(1))
    assert await store.request_cancel(rid, "user said stop") == "cancelled"
    rec = await store.get_run(rid)
    assert rec is not None
    assert rec.status == "cancelled"
    assert rec.error_type == "RunCancelled"
    assert rec.error == "user said stop"
    assert rid not in await store.active_runs()
    journal = await store.read_journal(rid)
    assert len(journal) == 1
    assert isinstance(journal[0].entry, Finished) and journal[0].entry.status == "cancelled"
    # A worker that fetches the request afterwards finds it terminal.
    claim = await store.claim(rid, agent="fast", input=encode_value(1), epoch=2, worker="w1")
    assert (claim.outcome, claim.status) == ("terminal", "cancelled")


async def test_store_cancel_running_run_flags_next_append(store: CheckpointStore) -> None:
    rid = uuid.uuid4().hex
    await store.create_run(rid, "fast", encode_value(1))
    await store.claim(rid, agent="fast", input=encode_value(1), epoch=5, worker="w1")
    assert await store.request_cancel(rid, "stop please") == "requested"
    rec = await store.get_run(rid)
    assert rec is not None and rec.status == "running" and rec.cancel == "stop please"
    assert await store.append(rid, 5, 2, step_done("step:q", 1)) == "stop please"
    # A new owner learns of the cancellation from its claim.
    claim = await store.claim(rid, agent="fast", input=encode_value(1), epoch=6, worker="w2")
    assert claim.outcome == "ok" and claim.cancel == "stop please"


async def test_store_cancel_unknown_run_is_missing(store: CheckpointStore) -> None:
    assert await store.request_cancel(uuid.uuid4().hex) == "missing"
    assert await store.get_run(uuid.uuid4().hex) is None
    assert await store.read_journal(uuid.uuid4().hex) == []


async def test_store_keys_use_namespace_and_hash_tag(
    store: CheckpointStore, namespace: str
) -> None:
    assert store.record_key("r1") == f"{namespace}:{{r1}}:run"
    assert store.journal_key("r1") == f"{namespace}:{{r1}}:journal"
    rid = uuid.uuid4().hex
    await store.create_run(rid, "fast", encode_value(1))
    assert await store.redis.exists(store.record_key(rid)) == 1


# --------------------------------------------------------------------------- leases


@pytest.fixture
async def broker(settings: Settings) -> AsyncIterator[Broker]:
    b = await Broker.connect(settings, owner="w1")
    yield b
    streams = [
        b.names.runs_stream,
        b.names.events_stream,
        b.names.lease_stream,
        b.names.workers_stream,
        f"KV_{b.names.agents_bucket}",
    ]
    for stream in streams:
        with contextlib.suppress(Exception):
            await b.js.delete_stream(stream)
    await b.close()


async def _renew(manager: LeaseManager, leases: list[Lease]) -> list[Lease]:
    """``manager.renew`` with a deadline, so a renewal that never answers fails the test."""
    try:
        return await asyncio.wait_for(manager.renew(leases), timeout=3)
    except TimeoutError:
        raise AssertionError(
            f"LeaseManager.renew({[lease.run_id for lease in leases]}) did not return within 3 s"
        ) from None


async def test_lease_acquire_is_exclusive(broker: Broker) -> None:
    rid = uuid.uuid4().hex
    w2 = LeaseManager(broker.js, broker.names, broker.settings.lease_ttl, "w2")
    lease = await broker.leases.acquire(rid)
    assert isinstance(lease, Lease)
    assert lease.run_id == rid
    assert lease.epoch == lease.revision > 0
    assert await w2.acquire(rid) is None
    assert await broker.leases.acquire(rid) is None  # not re-entrant either
    state = await broker.leases.state(rid)
    assert (state.holder, state.revision) == ("w1", lease.revision)


async def test_lease_renew_moves_revision_keeps_epoch(broker: Broker) -> None:
    rid = uuid.uuid4().hex
    lease = await broker.leases.acquire(rid)
    assert lease is not None
    epoch, rev = lease.epoch, lease.revision
    assert await _renew(broker.leases, [lease]) == []
    assert lease.revision > rev
    assert lease.epoch == epoch
    state = await broker.leases.state(rid)
    assert (state.holder, state.revision) == ("w1", lease.revision)
    assert await _renew(broker.leases, []) == []


async def test_lease_release_and_reacquire(broker: Broker) -> None:
    rid = uuid.uuid4().hex
    w2 = LeaseManager(broker.js, broker.names, broker.settings.lease_ttl, "w2")
    lease = await broker.leases.acquire(rid)
    assert lease is not None
    assert await broker.leases.release(lease) is True
    assert (await broker.leases.state(rid)).holder is None
    taken = await w2.acquire(rid)
    assert taken is not None
    assert taken.epoch > lease.epoch
    assert (await w2.state(rid)).holder == "w2"
    # The old lease is no longer ours: neither release nor renew may touch it.
    assert await broker.leases.release(lease) is False
    assert await _renew(broker.leases, [lease]) == [lease]
    assert (await w2.state(rid)).holder == "w2"


async def test_lease_state_of_unknown_run_is_free(broker: Broker) -> None:
    state = await broker.leases.state(uuid.uuid4().hex)
    assert state.holder is None and state.revision == 0


async def test_lease_expires_without_renewal_and_is_taken_over(broker: Broker) -> None:
    rid = uuid.uuid4().hex
    w1 = LeaseManager(broker.js, broker.names, 1, "w1")
    w2 = LeaseManager(broker.js, broker.names, 1, "w2")
    old = await w1.acquire(rid)
    assert old is not None
    assert await w2.acquire(rid) is None

    async def expired() -> bool:
        return (await w1.state(rid)).holder is None

    await eventually(expired, timeout=5, message="a 1 s lease did not expire within 5 s")
    new = await w2.acquire(rid)
    assert new is not None
    assert new.epoch > old.epoch
    assert (await w2.state(rid)).holder == "w2"
    assert await _renew(w2, [new]) == []
    # The old owner's renewal must report the lease lost, and must not overwrite the new one.
    assert await _renew(w1, [old]) == [old]
    assert (await w2.state(rid)).holder == "w2"


@pytest.mark.parametrize(
    ("type_", "data", "expected"),
    [
        # Stalwart's own event data: top-level numbers are looked at.
        ("step.completed", {"kind": "step", "duration": float("inf")}, {"duration": "Infinity"}),
        # A run result: at any depth.
        ("run.completed", {"result": {"x": [1.0, float("nan")]}}, {"result": {"x": [1.0, "NaN"]}}),
        # Agent-emitted events: at any depth.
        ("my.progress", {"a": {"b": [float("-inf")]}}, {"a": {"b": ["-Infinity"]}}),
    ],
)
def test_event_json_keeps_non_finite_floats(type_: str, data: Any, expected: Any) -> None:
    from stalwart.messages import RunEvent, encode_event

    encoded = encode_event(RunEvent(type=type_, run_id="r", at=1.0, data=data))
    decoded = msgspec.json.decode(encoded)["data"]
    assert {k: decoded[k] for k in expected} == expected
