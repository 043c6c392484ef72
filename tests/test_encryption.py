"""Payload encryption: the AES-GCM codec, sealed journal entries, and no plaintext anywhere.

The server tests run on servers of their own (Redis with an fsync'ed append-only file), so
that "anywhere" can mean everything: every Redis key of every type, every message of every
JetStream stream and KV bucket, and the servers' files on disk.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis.asyncio as aioredis
from nats.js.errors import NotFoundError

from stalwart import App, Client, RunContext, RunFailed, Settings, Supervisor, Worker
from stalwart.checkpoints import (
    AesGcmCodec,
    ErrorInfo,
    Finished,
    StepAttempt,
    StepDone,
    StepError,
    decode_entry,
    decode_value,
    encode_entry,
    encode_value,
    envelope_header,
    envelope_key_id,
    open_bytes,
    payload_codec,
    seal_bytes,
    set_payload_codec,
)
from stalwart.checkpoints._codec import (
    codec_from_settings,
    describe_sealed,
    open_event_data,
    open_text,
    seal_text,
    sealed_blob,
)
from stalwart.checkpoints._entries import seal_entry
from stalwart.errors import ConfigurationError, PayloadKeyError
from stalwart.testing import EmbeddedServers
from tests.apps_encrypted import ToyKmsCodec
from tests.conftest import ROOT, Servers, worker_pool
from tests.helpers import eventually, execs, journaled, open_gate, rid

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

SECRET = "MARKER-" + uuid.uuid4().hex[:12] + "-TOPSECRET"
"""The marker secret every payload of the server tests carries."""

K1 = base64.b64encode(b"\x01" * 32).decode()
K2 = base64.b64encode(b"\x02" * 32).decode()


def keyring(tmp: Path, current: str, **keys: str) -> str:
    path = tmp / f"keys-{current}-{'-'.join(sorted(keys))}-{uuid.uuid4().hex[:4]}.json"
    path.write_text(json.dumps({"current": current, "keys": keys}))
    return str(path)


@pytest.fixture
def no_codec() -> Iterator[None]:
    """Leave the process without a codec afterwards, whatever the test set."""
    set_payload_codec(None)
    yield
    set_payload_codec(None)


# -- the codec --------------------------------------------------------------------------------


def test_envelope_names_its_key_and_round_trips() -> None:
    codec = AesGcmCodec({"k1": b"\x01" * 32}, "k1")
    blob = codec.encode(b"hello")
    assert blob.startswith(envelope_header("k1")) and envelope_key_id(blob) == "k1"
    assert b"hello" not in blob
    assert codec.decode(blob) == b"hello"
    assert len(blob) == len(envelope_header("k1")) + 12 + 5 + 16  # nonce, text, tag


def test_every_payload_gets_its_own_nonce() -> None:
    codec = AesGcmCodec({"k1": b"\x01" * 32}, "k1")
    start = len(envelope_header("k1"))
    blobs = [codec.encode(b"same text") for _ in range(2000)]
    assert len({b[start : start + 12] for b in blobs}) == 2000
    assert len(set(blobs)) == 2000


def test_tampering_is_detected_anywhere_in_the_envelope() -> None:
    codec = AesGcmCodec({"k1": b"\x01" * 32, "k2": b"\x02" * 32}, "k1")
    blob = codec.encode(b"pay 100 to alice")
    for i in range(3, len(blob)):  # key id bytes, nonce, ciphertext, tag
        bad = bytearray(blob)
        bad[i] ^= 0x01
        with pytest.raises(PayloadKeyError):
            codec.decode(bytes(bad))
    # The key id is authenticated too: relabelled as k2, it fails (not decrypted as k2).
    relabelled = envelope_header("k2") + blob[len(envelope_header("k1")) :]
    with pytest.raises(PayloadKeyError, match="'k2' failed authentication"):
        codec.decode(relabelled)
    with pytest.raises(PayloadKeyError):
        codec.decode(blob[:-1])  # truncated


def test_an_unknown_key_id_is_a_clear_error_naming_it() -> None:
    old = AesGcmCodec({"k1": b"\x01" * 32}, "k1").encode(b"x")
    with pytest.raises(PayloadKeyError, match=r"key 'k1', which is not in .* \(keys: k2\)") as e:
        AesGcmCodec({"k2": b"\x02" * 32}, "k2").decode(old)
    assert e.value.key_id == "k1"


def test_keyrings_from_files_and_the_environment(tmp_path: Path) -> None:
    path = keyring(tmp_path, "k2", k1=K1, k2=K2)
    codec = AesGcmCodec.from_keyring_file(path)
    assert codec.current == "k2" and codec.key_ids == ["k1", "k2"]
    assert "\\x01" not in repr(codec) and K1 not in repr(codec)
    toml = tmp_path / "keys.toml"
    toml.write_text(f'current = "k1"\n[keys]\nk1 = "{K1}"\n')
    assert AesGcmCodec.from_keyring_file(str(toml)).current == "k1"
    assert AesGcmCodec.from_key(f"k9:{K2}").key_ids == ["k9"]
    assert AesGcmCodec.from_key(K2).current == "default"
    # Settings name one way or the other, and hide the key from their repr.
    settings = Settings(encryption_keys_file=path)
    restored = codec_from_settings(settings)
    assert isinstance(restored, AesGcmCodec) and restored.current == "k2"
    assert codec_from_settings(Settings()) is None
    assert K1 not in repr(Settings(encryption_key=f"k1:{K1}"))
    with pytest.raises(ConfigurationError, match="not both"):
        codec_from_settings(Settings(encryption_key=K1, encryption_keys_file=path))


def test_a_codec_of_ones_own_is_named_by_a_setting(no_codec: None) -> None:
    codec = codec_from_settings(Settings(encryption_codec="tests.apps_encrypted:toy_kms"))
    assert isinstance(codec, ToyKmsCodec)
    set_payload_codec(codec)
    sealed = seal_bytes(bytes(encode_value({"a": SECRET})))
    assert SECRET.encode() not in sealed and describe_sealed(sealed) == "<encrypted: key kms-1>"
    assert decode_value(sealed) == {"a": SECRET}
    with pytest.raises(ConfigurationError, match=r"package\.module:factory"):
        codec_from_settings(Settings(encryption_codec="tests.apps_encrypted:nothing"))
    with pytest.raises(ConfigurationError, match="no encode/decode"):
        codec_from_settings(Settings(encryption_codec="builtins:object"))


@pytest.mark.parametrize(
    ("doc", "error"),
    [
        ({"current": "k3", "keys": {"k1": K1}}, "'k3' is not in the keyring"),
        ({"current": "k1", "keys": {"k1": "not base64!"}}, "'k1' is not valid base64"),
        ({"current": "k1", "keys": {"k1": base64.b64encode(b"short").decode()}}, "5 bytes"),
        ({"current": "k 1", "keys": {"k 1": K1}}, "key id 'k 1' must be"),
        ({"keys": {"k1": K1}}, "must hold"),
    ],
)
def test_bad_keyrings_are_refused_with_the_reason(
    tmp_path: Path, doc: dict[str, Any], error: str
) -> None:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigurationError, match=error):
        AesGcmCodec.from_keyring_file(str(path))


# -- sealed values and entries ----------------------------------------------------------------


def _entries() -> list[Any]:
    err = ErrorInfo("ValueError", "the message")
    return [
        StepDone(
            key="step:a", kind="step", name="a", fp="f", result=encode_value({"x": 1}),
            epoch=3, worker="w", at=1.0, duration=0.1,
        ),
        StepAttempt(
            key="step:a", kind="step", name="a", fp="f", attempt=1, error=err, delay=0.5,
            epoch=3, worker="w", at=1.0, duration=0.1,
        ),
        StepError(
            key="step:a", kind="step", name="a", fp="f", error=err,
            epoch=3, worker="w", at=1.0, duration=0.1,
        ),
        Finished(status="completed", epoch=3, worker="w", at=2.0, result=encode_value([1, 2])),
        Finished(status="failed", epoch=3, worker="w", at=2.0, error=err),
    ]  # fmt: skip


def test_without_a_codec_nothing_changes(no_codec: None) -> None:
    for entry in _entries():
        assert seal_entry(entry) is entry
    data = bytes(encode_value({"a": "b"}))
    assert seal_bytes(data) is data and open_bytes(data) is data
    assert seal_text("t") == "t" and open_text("t") == "t"


def test_sealed_entries_keep_metadata_clear_and_payloads_hidden(no_codec: None) -> None:
    set_payload_codec(AesGcmCodec({"k1": b"\x01" * 32}, "k1"))
    for entry in _entries():
        stored = encode_entry(seal_entry(entry))
        assert b"the message" not in stored
        back = decode_entry(stored)
        assert back.epoch == entry.epoch and back.worker == entry.worker  # metadata clear
        if isinstance(back, StepDone | Finished) and len(back.result):
            assert sealed_blob(bytes(back.result)) is not None
            assert decode_value(back.result) == decode_value(entry.result)
        if isinstance(back, StepError | StepAttempt | Finished) and back.error is not None:
            assert back.error.type == "ValueError"  # the type stays readable
            assert open_text(back.error.message) == "the message"
        assert seal_entry(back) == back  # sealing a sealed entry changes nothing
    # A process without the key: a clear error for values, the marker for display.
    sealed = seal_bytes(bytes(encode_value("v")))
    text = seal_text("m")
    set_payload_codec(None)
    with pytest.raises(PayloadKeyError, match="key 'k1' and this process has no encryption key"):
        decode_value(sealed)
    assert describe_sealed(sealed) == open_text(text) == "<encrypted: key k1>"
    assert open_event_data({"result": text, "kind": "step"})["kind"] == "step"


def test_events_keep_sealed_texts_whole_when_they_are_cut_down(no_codec: None) -> None:
    from stalwart.broker._events import bounded_event
    from stalwart.messages import RunEvent, decode_event

    set_payload_codec(AesGcmCodec({"k1": b"\x01" * 32}, "k1"))
    message = seal_text("x" * 2000)
    event = RunEvent(
        type="step.failed", run_id="r", at=1.0, step="s" * 600,
        data={"kind": "step", "error": {"type": "E", "message": message}, "note": "y" * 600},
    )  # fmt: skip
    back = decode_event(bounded_event(event, text_limit=256, max_bytes=1 << 20))
    assert len(back.step) < 600 and len(back.data["note"]) < 600  # clear texts are cut
    assert open_event_data(back.data)["error"]["message"] == "x" * 2000  # the sealed one not


# -- the servers: encrypted runs leave no plaintext anywhere ------------------------------------


@pytest.fixture(scope="module")
def own_servers() -> Iterator[EmbeddedServers]:
    """Servers only this module uses: everything in them may be dumped and searched."""
    with EmbeddedServers(redis_appendonly=True, redis_appendfsync="always") as s:
        yield s


@pytest.fixture
def enc_settings(own_servers: EmbeddedServers) -> Settings:
    return Settings(
        nats_url=own_servers.nats_url,
        redis_url=own_servers.redis_url,
        namespace="e" + uuid.uuid4().hex[:10],
        lease_ttl=2,
        reconcile_interval=0.5,
    )


@pytest.fixture
async def enc_client(enc_settings: Settings, no_codec: None) -> AsyncIterator[Client]:
    set_payload_codec(AesGcmCodec({"k1": b"\x01" * 32, "k2": b"\x02" * 32}, "k1"))
    c = await Client.connect(settings=enc_settings)
    yield c
    await c.close()


@pytest.fixture
async def enc_supervisor(enc_settings: Settings) -> AsyncIterator[Supervisor]:
    sup = Supervisor(enc_settings)
    await sup.start()
    task = asyncio.create_task(sup.run())
    yield sup
    sup.stop()
    await asyncio.wait_for(task, 60)


@pytest.fixture
async def enc_workers(
    enc_settings: Settings, own_servers: EmbeddedServers, enc_client: Client
) -> AsyncIterator[Any]:
    servers = Servers(own_servers.nats_url, own_servers.redis_url)
    async with worker_pool("tests.apps_encrypted:app", enc_settings, servers, enc_client) as w:
        yield w


async def redis_dump(url: str, match: str = "*") -> list[bytes]:
    """Every key (matching ``match``) of every type in the Redis at ``url``, with its values,
    and its DUMP."""
    r = aioredis.Redis.from_url(url)
    out: list[bytes] = []
    try:
        async for key in r.scan_iter(match=match, count=1000):
            out.append(key)
            kind = (await r.type(key)).decode()
            if kind == "string":
                out.append(await r.get(key) or b"")
            elif kind == "hash":
                out += [b for kv in (await r.hgetall(key)).items() for b in kv]
            elif kind == "list":
                out += await r.lrange(key, 0, -1)
            elif kind == "set":
                out += list(await r.smembers(key))
            elif kind == "zset":
                out += [m for m, _ in await r.zrange(key, 0, -1, withscores=True)]
            elif kind == "stream":
                for sid, fields in await r.xrange(key):
                    out += [sid, *(b for kv in fields.items() for b in kv)]
            else:
                raise AssertionError(f"unexpected key type {kind} of {key!r}")
            out.append(await r.dump(key) or b"")
    finally:
        await r.aclose()
    return out


async def nats_dump(client: Client, only: str = "") -> list[bytes]:
    """Every message (data and headers) of every stream (whose name contains ``only``), KV
    buckets included."""
    js = client.broker.js
    out: list[bytes] = []
    infos: list[Any] = []
    while page := await js.streams_info(offset=len(infos)):  # the server pages the list (256)
        infos += page
    for info in infos:
        name, state = info.config.name, info.state
        if only not in name:
            continue
        out.append(name.encode())
        if not state.messages:
            continue
        for seq in range(max(state.first_seq, 1), state.last_seq + 1):
            try:
                msg = await js.get_msg(name, seq)
            except NotFoundError:
                continue  # deleted (an acked request of the work queue)
            out += [msg.subject.encode(), msg.data or b""]
            out += [f"{k}: {v}".encode() for k, v in (msg.headers or {}).items()]
    return out


def disk_dump(*dirs: Path) -> list[tuple[str, bytes]]:
    """Every file the servers wrote: the JetStream file store, Redis' append-only file."""
    return [(str(p), p.read_bytes()) for d in dirs for p in d.rglob("*") if p.is_file()]


def leaks(chunks: list[bytes]) -> list[bytes]:
    return [c[:200] for c in chunks if SECRET.encode() in c]


async def test_encrypted_runs_leave_no_plaintext_in_redis_nats_or_on_disk(
    enc_client: Client,
    enc_workers: Any,
    enc_supervisor: Supervisor,
    enc_settings: Settings,
    own_servers: EmbeddedServers,
    tmp_path: Path,
) -> None:
    keys = keyring(tmp_path, "k1", k1=K1)
    client = enc_client
    # Submitted before any worker runs: the requests wait in the runs stream, sealed.
    run_id, fail_id = rid(), rid()
    handle = await client.submit(
        "vault", {"secret": SECRET, "pause": True}, run_id=run_id, require_registered=False
    )
    failing = await client.submit("vault_fails", SECRET, run_id=fail_id, require_registered=False)
    queued = await nats_dump(client)
    assert any(run_id.encode() in c for c in queued)  # the request is there...
    assert not leaks(queued)  # ...and its input is not readable
    assert await handle.signal("approve", {"ok": SECRET}) == "stored"  # before the wait

    a = await enc_workers("a", STALWART_ENCRYPTION_KEYS_FILE=keys)
    await eventually(lambda: journaled(client, run_id, "step:echo"), timeout=30)
    a.kill()  # SIGKILL after a journaled step, mid-run
    r = aioredis.Redis.from_url(own_servers.redis_url)
    try:
        await open_gate(r, run_id, "after")
        b = await enc_workers("b", STALWART_ENCRYPTION_KEYS_FILE=keys)
        result = await handle.result(timeout=40)
        assert await execs(r, run_id, "step:echo") == 1  # replayed from the journal
    finally:
        await r.aclose()
    # The client has the key: everything reads back as it was written.
    assert result == {
        "first": f"echo {SECRET}",
        "second": f"second attempt {SECRET}",
        "failed": f"step 'step:broken' failed: ValueError: broken step leaks {SECRET}",
        "signal": {"ok": SECRET},
    }
    with pytest.raises(RunFailed, match=f"the run fails and leaks {SECRET}"):
        await failing.result(timeout=30)
    events = [e async for e in handle.events(follow=False)]
    note = next(e for e in events if e.type == "note")
    assert note.data == {"secret": SECRET, "n": 1}
    retry = next(e for e in events if e.type == "step.retrying")
    assert retry.data["error"]["message"] == f"first attempt leaks {SECRET}"
    assert next(e for e in events if e.type == "run.completed").data["result"] == result
    history = await handle.history()
    assert any(SECRET in (row.error or "") for row in history.steps)
    b.kill()

    # Now look for the marker everywhere.
    assert not leaks(await redis_dump(own_servers.redis_url))
    assert not leaks(await nats_dump(client))
    await client.store.redis.execute_command("BGREWRITEAOF")  # base file too, not just the tail
    files = disk_dump(own_servers.nats.store_dir, own_servers.redis.data_dir)
    assert any(name.endswith(".aof") for name, _ in files) and any(
        b"stalwart" in d for _, d in files
    )
    assert [name for name, data in files if SECRET.encode() in data] == []
    # The runs' metadata is readable without any key (what operators and the supervisor use).
    record = await client.store.get_run(run_id)
    assert record is not None and record.status == "completed" and record.agent == "vault"
    assert (await client.store.get_run(fail_id)).error_type == "RuntimeError"  # type: ignore[union-attr]


async def test_a_run_written_under_k1_resumes_under_k2(
    enc_client: Client, enc_workers: Any, enc_supervisor: Supervisor, own_servers: EmbeddedServers,
    tmp_path: Path,
) -> None:  # fmt: skip
    client, run_id = enc_client, rid()
    handle = await client.submit("rotating", SECRET, run_id=run_id, require_registered=False)
    a = await enc_workers("a", STALWART_ENCRYPTION_KEYS_FILE=keyring(tmp_path, "k1", k1=K1))
    await eventually(lambda: journaled(client, run_id, "step:first"), timeout=30)
    a.kill()
    rotated = keyring(tmp_path, "k2", k1=K1, k2=K2)  # k2 current, k1 kept for old runs
    await enc_workers("b", STALWART_ENCRYPTION_KEYS_FILE=rotated)
    r = aioredis.Redis.from_url(own_servers.redis_url)
    try:
        await open_gate(r, run_id, "after")
        assert await handle.result(timeout=40) == [f"echo {SECRET}", f"echo {SECRET}-2"]
        assert await execs(r, run_id, "step:first") == 1
    finally:
        await r.aclose()
    # Forking needs no key: the sealed entries and input are copied as they are.
    set_payload_codec(None)
    fork = await client.fork(run_id, at="first")
    set_payload_codec(AesGcmCodec({"k1": b"\x01" * 32, "k2": b"\x02" * 32}, "k1"))
    r = aioredis.Redis.from_url(own_servers.redis_url)
    try:
        await open_gate(r, fork.run_id, "after")
        assert await fork.result(timeout=40) == [f"echo {SECRET}", f"echo {SECRET}-2"]
        assert await execs(r, fork.run_id, "step:first") == 0  # replayed from the copy
    finally:
        await r.aclose()
    used = {
        je.entry.key: envelope_key_id(sealed_blob(bytes(je.entry.result)) or b"")
        for je in await client.store.read_journal(run_id)
        if isinstance(je.entry, StepDone)
    }
    assert used == {"step:first": "k1", "step:second": "k2"}  # old entries keep their key
    record = await handle.status()
    assert envelope_key_id(sealed_blob(bytes(record.result or b"")) or b"") == "k2"
    assert envelope_key_id(sealed_blob(bytes(record.input or b"")) or b"") == "k1"


async def test_a_worker_without_the_key_stops_clearly_and_loses_nothing(
    enc_client: Client, enc_workers: Any, enc_supervisor: Supervisor, own_servers: EmbeddedServers,
    tmp_path: Path,
) -> None:  # fmt: skip
    client, run_id = enc_client, rid()
    handle = await client.submit("rotating", SECRET, run_id=run_id, require_registered=False)
    a = await enc_workers("a", STALWART_ENCRYPTION_KEYS_FILE=keyring(tmp_path, "k1", k1=K1))
    await eventually(lambda: journaled(client, run_id, "step:first"), timeout=30)
    a.kill()
    before = await client.store.read_journal(run_id)
    r = aioredis.Redis.from_url(own_servers.redis_url)
    try:
        await open_gate(r, run_id, "after")
        wrong = await enc_workers(
            "wrong", STALWART_ENCRYPTION_KEYS_FILE=keyring(tmp_path, "k2", k2=K2)
        )

        async def refused() -> bool:
            reasons = [
                e.data["reason"]
                async for e in handle.events(follow=False)
                if e.type == "run.released"
            ]
            return any("'k1'" in reason for reason in reasons)

        await eventually(refused, timeout=30)
        wrong.kill()
        # The journal kept every entry it had (the wrong worker only added its Started
        # entries), and the run is still unfinished.
        after = await client.store.read_journal(run_id)
        assert [je.entry for je in after if not je.entry.__class__.__name__ == "Started"] == [
            je.entry for je in before if not je.entry.__class__.__name__ == "Started"
        ]
        assert not (await handle.status()).terminal
        # A worker with the key takes it from there; the first step is not run again.
        await enc_workers(
            "right", STALWART_ENCRYPTION_KEYS_FILE=keyring(tmp_path, "k2", k1=K1, k2=K2)
        )
        assert await handle.result(timeout=40) == [f"echo {SECRET}", f"echo {SECRET}-2"]
        assert await execs(r, run_id, "step:first") == 1
    finally:
        await r.aclose()

    # Readers without the key see the metadata and which key they would need.
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("STALWART_ENCRYPTION_KEY", None)
    env.pop("STALWART_ENCRYPTION_KEYS_FILE", None)
    args = [
        "--nats-url", own_servers.nats_url, "--redis-url", own_servers.redis_url,
        "--namespace", client.settings.namespace,
    ]  # fmt: skip
    status = await _cli(env, "status", run_id, *args)
    assert status["status"] == "completed" and status["result"] == "<encrypted: key k2>"
    events = await _cli_lines(env, "events", run_id, *args)
    ended = next(e for e in events if e["type"] == "run.completed")
    assert ended["data"]["result"] == "<encrypted: key k2>"
    # With the key, the same commands show the payloads.
    env["STALWART_ENCRYPTION_KEYS_FILE"] = keyring(tmp_path, "k2", k1=K1, k2=K2)
    status = await _cli(env, "status", run_id, *args)
    assert status["result"] == [f"echo {SECRET}", f"echo {SECRET}-2"]
    # And the client without any codec gets a clear error, not garbage.
    set_payload_codec(None)
    with pytest.raises(PayloadKeyError, match="'k2'"):
        await handle.result(timeout=5)
    assert payload_codec() is None


async def _cli_lines(env: dict[str, str], *argv: str) -> list[dict[str, Any]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "stalwart", *argv, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return [json.loads(line) for line in out.decode().splitlines() if line.strip()]


async def _cli(env: dict[str, str], *argv: str) -> dict[str, Any]:
    (doc,) = await _cli_lines(env, *argv)
    return doc


async def test_workers_use_a_kms_codec_named_by_the_setting(
    enc_client: Client, enc_workers: Any
) -> None:
    set_payload_codec(ToyKmsCodec())
    await enc_workers("kms", STALWART_ENCRYPTION_CODEC="tests.apps_encrypted:toy_kms")
    handle = await enc_client.submit("vault_fails", SECRET)
    with pytest.raises(RunFailed, match=f"the run fails and leaks {SECRET}"):
        await handle.result(timeout=30)
    (done,) = [
        je.entry
        for je in await enc_client.store.read_journal(handle.run_id)
        if isinstance(je.entry, StepDone)
    ]
    blob = sealed_blob(bytes(done.result))
    assert blob is not None and envelope_key_id(blob) == "kms-1"
    assert decode_value(done.result) == f"echo {SECRET}"


# -- the control: the same search finds plaintext when nothing is encrypted ---------------------


async def test_without_encryption_the_search_finds_the_marker(
    settings: Settings, servers: Servers, no_codec: None
) -> None:
    """Proves the dump above can fail: unencrypted, the marker is in Redis and the stream."""
    app = App("plain")

    def explode(what: str) -> None:
        raise ValueError(f"tool broke on {what}")

    @app.agent("failing")
    async def failing(ctx: RunContext, what: str) -> str:
        await ctx.step("echo", str.upper, what)
        await ctx.step("boom", explode, what)
        return "unreachable"

    worker = Worker(app, settings)
    await worker.start()
    task = asyncio.create_task(worker.run())
    try:
        async with await Client.connect(settings=settings) as client:
            handle = await client.submit("failing", SECRET)
            with pytest.raises(RunFailed, match=SECRET):
                await handle.result(timeout=20)
            # Only this test's keys: the shared server holds every other test's too.
            assert leaks(await redis_dump(servers.redis_url, f"{settings.namespace}:*"))

            # The request left the work-queue stream when it was acked; the events carry the
            # marker, published a moment after the run record says it failed.
            async def in_events() -> bool:
                return bool(leaks(await nats_dump(client, only=settings.namespace.upper())))

            await eventually(in_events, timeout=10)
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)
