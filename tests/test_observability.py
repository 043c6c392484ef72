"""Observability: traces across processes and crashes, Prometheus metrics, JSON logs.

The cross-process tests start real worker (and supervisor) processes that export their spans
to a JSON-lines file (``STALWART_TRACING=file:<path>``) while this process, the client,
collects its own spans with an in-memory exporter.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import re
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
import redis.asyncio as aioredis
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from stalwart import Client, RunFailed, Settings, observability, telemetry
from stalwart.actors import _telemetry as actor_telemetry
from stalwart.checkpoints import ErrorInfo, Finished, StepAttempt, StepDone, StepError, encode_value
from stalwart.errors import ConfigurationError
from stalwart.policies import Policies
from stalwart.supervisor import _telemetry as supervisor_telemetry
from stalwart.telemetry import _metrics, _tracing
from stalwart.telemetry._tracing import carrier_json, context_from, span_record
from stalwart.testing import StalwartProcess, free_port
from tests.conftest import ROOT, WorkerFactory
from tests.helpers import eventually, execs, gate_key, journaled, open_gate, rid


@pytest.fixture
def memory_spans() -> Iterator[InMemorySpanExporter]:
    """This process's spans (client, in-process supervisor), kept in memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    observability.set_tracer_provider(provider)
    yield exporter
    observability.set_tracer_provider(None)
    provider.shutdown()


def _hex(value: int, width: int) -> str:
    return f"{value:0{width}x}"


# --------------------------------------------------------------------------- tracing


@pytest.mark.slow
async def test_one_trace_across_client_two_workers_and_a_sigkill(
    client: Client,
    workers: WorkerFactory,
    supervisor: Any,
    counters: aioredis.Redis,
    memory_spans: InMemorySpanExporter,
    tmp_path: Path,
) -> None:
    spans_file = tmp_path / "spans.jsonl"
    tracing = {"STALWART_TRACING": f"file:{spans_file}"}
    a = await workers("a", **tracing)
    run_id = rid()
    handle = await client.submit("ten", {"pause_after": 5}, run_id=run_id)
    await eventually(lambda: journaled(client, run_id, "step:s5"))
    a.kill()  # SIGKILL while the run waits between step 5 and step 6
    await open_gate(counters, run_id, "after")
    await workers("b", **tracing)
    assert await handle.result(timeout=30) == sum(i * 10 for i in range(1, 11))

    mine = {s.name: s for s in memory_spans.get_finished_spans()}
    submit = mine["submit ten"]
    assert submit.kind == SpanKind.PRODUCER
    assert submit.context is not None
    trace_id = _hex(submit.context.trace_id, 32)
    submit_id = _hex(submit.context.span_id, 16)
    # The run record keeps the submitter's context, for whoever places the run next.
    assert trace_id in (await handle.status()).trace

    async def all_spans() -> list[dict[str, Any]] | None:
        spans = observability.read_span_file(spans_file)
        return spans if any(s["name"] == "run ten" for s in spans) else None

    spans = await eventually(all_spans, timeout=10, message="worker b never ended its run span")
    assert {s["trace_id"] for s in spans} == {trace_id}, "one trace, across both workers"

    steps = [s for s in spans if "stalwart.step_key" in s["attributes"]]
    keys = Counter(s["attributes"]["stalwart.step_key"] for s in steps)
    assert keys == Counter({f"step:s{i}": 1 for i in range(1, 11)}), "one span per executed step"
    assert all(s["attributes"]["stalwart.replayed"] is False for s in steps)
    by_key = {s["attributes"]["stalwart.step_key"]: s for s in steps}
    assert {by_key[f"step:s{i}"]["attributes"]["stalwart.worker"] for i in range(1, 6)} == {"a"}
    assert {by_key[f"step:s{i}"]["attributes"]["stalwart.worker"] for i in range(6, 11)} == {"b"}
    assert by_key["step:s1"]["name"] == "step s1"
    assert by_key["step:s1"]["attributes"]["stalwart.attempt"] == 1

    # Worker a's run span never ended (SIGKILL); worker b's is a child of the submit span.
    runs = [s for s in spans if s["name"] == "run ten"]
    assert len(runs) == 1
    run_b = runs[0]
    assert run_b["kind"] == "CONSUMER"
    assert run_b["parent_id"] == submit_id
    assert run_b["attributes"]["stalwart.worker"] == "b"
    assert run_b["attributes"]["stalwart.resumed"] is True
    assert run_b["attributes"]["stalwart.steps.replayed"] == 5  # replayed: counted, not spanned
    assert run_b["attributes"]["stalwart.steps.live"] == 5
    assert run_b["attributes"]["stalwart.outcome"] == "completed"
    assert {by_key[f"step:s{i}"]["parent_id"] for i in range(6, 11)} == {run_b["span_id"]}
    parents_a = {by_key[f"step:s{i}"]["parent_id"] for i in range(1, 6)}
    assert len(parents_a) == 1 and run_b["span_id"] not in parents_a  # a's own run span
    epoch_a = by_key["step:s1"]["attributes"]["stalwart.epoch"]
    assert by_key["step:s6"]["attributes"]["stalwart.epoch"] > epoch_a
    assert (
        run_b["attributes"]["stalwart.epoch"] == by_key["step:s6"]["attributes"]["stalwart.epoch"]
    )

    # The supervisor's resume request is in the same trace, and the run span links to it.
    # There can be several: the supervisor re-checks an orphan until it is placed (its
    # liveness probe, its lease watch, every reconcile pass), and each check traces the
    # request it publishes, though JetStream keeps only the first of an epoch.
    resumes = [s for s in memory_spans.get_finished_spans() if s.name == "resume ten"]
    assert resumes
    for resume in resumes:
        assert resume.kind == SpanKind.PRODUCER
        assert resume.context is not None and _hex(resume.context.trace_id, 32) == trace_id
        assert resume.parent is not None and _hex(resume.parent.span_id, 16) == submit_id
    links = [link["span_id"] for link in run_b["links"]]
    assert len(links) == 1
    assert links[0] in {_hex(r.context.span_id, 16) for r in resumes if r.context is not None}


async def test_step_spans_follow_genai_conventions(
    client: Client, workers: WorkerFactory, memory_spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    spans_file = tmp_path / "spans.jsonl"
    await workers(STALWART_TRACING=f"file:{spans_file}")
    chat = await client.submit("chatty", 2)
    assert await chat.result(timeout=20) == 2
    loop = await client.submit("looping", None)
    with pytest.raises(RunFailed):  # the loop guard stops it at the 5th identical call
        await loop.result(timeout=20)
    failing = await client.submit("failing", "x")
    with pytest.raises(RunFailed):
        await failing.result(timeout=20)

    async def spans_of(run_id: str) -> list[dict[str, Any]] | None:
        spans = [
            s
            for s in observability.read_span_file(spans_file)
            if s["attributes"].get("stalwart.run_id") == run_id
        ]
        return spans if any(s["name"].startswith("run ") for s in spans) else None

    models = [
        s for s in await eventually(lambda: spans_of(chat.run_id)) if s["name"] != "run chatty"
    ]
    assert [s["name"] for s in models] == ["chat gpt-4o", "chat gpt-4o"]
    attrs = models[0]["attributes"]
    assert models[0]["kind"] == "CLIENT"
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == "gpt-4o"
    assert attrs["gen_ai.response.model"] == "gpt-4o"
    assert attrs["gen_ai.usage.input_tokens"] == 60
    assert attrs["gen_ai.usage.output_tokens"] == 40
    assert attrs["stalwart.cost_usd"] == pytest.approx((60 * 2.5 + 40 * 10.0) / 1e6)
    assert attrs["stalwart.step_key"] == "model:1" and attrs["stalwart.step_kind"] == "model"
    assert "stalwart.step.result" not in attrs  # payloads stay out unless asked for

    tools = [
        s for s in await eventually(lambda: spans_of(loop.run_id)) if s["name"] != "run looping"
    ]
    assert {s["name"] for s in tools} == {"execute_tool search"}
    assert tools[0]["attributes"]["gen_ai.operation.name"] == "execute_tool"
    assert tools[0]["attributes"]["gen_ai.tool.name"] == "search"
    assert tools[0]["attributes"]["gen_ai.tool.call.id"] == "call0"
    run_loop = next(
        s for s in await eventually(lambda: spans_of(loop.run_id)) if s["name"] == "run looping"
    )
    assert run_loop["status"] == "ERROR"
    assert run_loop["attributes"]["error.type"] == "BudgetExceeded"

    failed = await eventually(lambda: spans_of(failing.run_id))
    boom = next(s for s in failed if s["name"] == "step boom")
    assert boom["status"] == "ERROR"
    assert boom["attributes"]["error.type"] == "ValueError"
    assert boom["attributes"]["stalwart.outcome"] == "failed"
    assert boom["attributes"]["stalwart.attempt"] == 3  # the default step policy: 3 attempts
    assert [e["name"] for e in boom["events"]] == ["stalwart.step.retry"] * 2


def test_file_exporter_writes_one_object_per_span(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(observability.JsonLinesSpanExporter(path)))
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("outer", kind=SpanKind.PRODUCER) as outer:
        with tracer.start_as_current_span("inner", attributes={"k": "v"}):
            pass
        # Written when each span ends, not at shutdown: a SIGKILL loses only open spans.
        assert [s["name"] for s in observability.read_span_file(path)] == ["inner"]
    spans = observability.read_span_file(path)
    assert [s["name"] for s in spans] == ["inner", "outer"]
    inner, outer_rec = spans
    assert inner["parent_id"] == outer_rec["span_id"] == _hex(outer.get_span_context().span_id, 16)
    assert outer_rec["kind"] == "PRODUCER" and outer_rec["parent_id"] is None
    assert inner["attributes"] == {"k": "v"}
    assert inner["trace_id"] == outer_rec["trace_id"]
    provider.shutdown()


def test_trace_parent_prefers_the_record_and_links_the_request() -> None:
    provider = TracerProvider()
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("submit") as submit:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        stored = carrier_json(carrier)
    with tracer.start_as_current_span("resume") as resume:
        headers = {"Nats-Msg-Id": "x"}
        propagate.inject(headers)
    parent = telemetry.trace_parent(stored, headers)
    assert parent.context is not None
    sc = trace.get_current_span(parent.context).get_span_context()
    assert sc.span_id == submit.get_span_context().span_id
    assert [link.context.span_id for link in parent.links] == [resume.get_span_context().span_id]
    # Only one of them: no link; neither (tracing off): no parent at all.
    assert telemetry.trace_parent("", headers).links == ()
    assert telemetry.trace_parent(stored, {"Nats-Msg-Id": "x"}).links == ()
    assert telemetry.trace_parent("", None) is telemetry.NO_PARENT
    assert context_from("not json") is None and context_from('{"a": "b"}') is None
    provider.shutdown()


def test_tracing_off_by_default_records_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STALWART_TRACING", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    assert _tracing.tracing_spec() == "off"
    assert observability.configure_tracing("t") is False
    with telemetry.producer_span("submit", "agent", "r1", "ns.runs.agent") as carrier:
        assert carrier == {}  # nothing to store, nothing on the wire
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    assert _tracing.tracing_spec() == "otlp"
    monkeypatch.setenv("STALWART_TRACING", "off")
    assert _tracing.tracing_spec() == "off"
    with pytest.raises(ConfigurationError, match="STALWART_TRACING"):
        observability.configure_tracing("t", "jaeger")


def test_span_record_is_json() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("t").start_as_current_span("x", attributes={"n": 1}):
        pass
    record = span_record(exporter.get_finished_spans()[0])
    assert json.loads(json.dumps(record))["attributes"] == {"n": 1}
    provider.shutdown()


# --------------------------------------------------------------------------- metrics


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


def _samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            out.append((m.group(1), labels, float(m.group(3))))
    return out


def value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (0 when none)."""
    return sum(
        v
        for n, lab, v in _samples(text)
        if n == name and all(lab.get(k) == want for k, want in labels.items())
    )


def found(text: str, name: str, **labels: str) -> list[float]:
    """The values of the samples of ``name`` whose labels include ``labels``."""
    return [
        v
        for n, lab, v in _samples(text)
        if n == name and all(lab.get(k) == want for k, want in labels.items())
    ]


async def scrape(port: int) -> str:
    return await asyncio.to_thread(_scrape, port)


async def reaches(port: int, name: str, want: float, **labels: str) -> str:
    """Scrape until ``name{labels}`` is ``want`` (a run's result can be read a moment before
    its worker has counted its end); returns that scrape."""
    last = ""

    async def check() -> bool:
        nonlocal last
        last = await scrape(port)
        return value(last, name, **labels) == want

    await eventually(check, timeout=10, message=lambda: f"{name}{labels} != {want}:\n{last}")
    return last


def _supervisor_process(settings: Settings, port: int) -> StalwartProcess:
    assert settings.nats_url and settings.redis_url
    return StalwartProcess(
        [
            "supervisor",
            "--nats-url",
            settings.nats_url,
            "--redis-url",
            settings.redis_url,
            "--namespace",
            settings.namespace,
            "--lease-ttl",
            str(settings.lease_ttl),
            "--metrics-port",
            str(port),
        ],
        env={
            "STALWART_RECONCILE_INTERVAL": "0.5",
            "STALWART_LOG_FORMAT": "json",
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
        },
        name="sup-metrics",
    )


async def _serving(port: int) -> bool:
    try:
        await scrape(port)
    except OSError:
        return False
    return True


@pytest.mark.slow
async def test_metrics_endpoints_move_as_runs_complete(
    client: Client, settings: Settings, workers: WorkerFactory, counters: aioredis.Redis
) -> None:
    wport, sport = free_port(), free_port()
    sup = _supervisor_process(settings, sport).start()
    try:
        await eventually(lambda: _serving(sport), timeout=20, message=lambda: sup.log_text())
        # A worker dies holding a run; the supervisor re-places it on the worker we scrape.
        doomed = await workers("m2")
        run_id = rid()
        held = await client.submit("sleepy", 1, run_id=run_id)
        await eventually(lambda: execs(counters, run_id, "step:wait"))
        await workers("m1", STALWART_METRICS_PORT=str(wport), STALWART_PASSIVATE_AFTER="0.5")
        await eventually(lambda: _serving(wport), timeout=10)
        doomed.kill()
        await counters.lpush(gate_key(run_id, "in"), "1", "2")
        assert await held.result(timeout=30) == 1
        sup_text = await reaches(sport, "stalwart_failovers_total", 1, agent="sleepy")
        assert value(sup_text, "stalwart_supervisor_leader") == 1

        before = await reaches(wport, "stalwart_runs_completed_total", 1, agent="sleepy")
        assert value(before, "stalwart_runs_started_total", agent="sleepy", resumed="true") == 1
        assert value(before, "stalwart_runs_completed_total", agent="fast") == 0

        for h in [await client.submit("fast", i) for i in range(3)]:
            await h.result(timeout=20)
        with pytest.raises(RunFailed):
            await (await client.submit("failing", "x")).result(timeout=30)
        with pytest.raises(RunFailed):
            await (await client.submit("looping", None)).result(timeout=20)
        await (await client.submit("flaky", 1)).result(timeout=30)  # one retry, after 2 s

        await reaches(wport, "stalwart_runs_failed_total", 1, agent="looping")
        after = await reaches(wport, "stalwart_runs_completed_total", 1, agent="flaky")
        assert value(after, "stalwart_runs_started_total", agent="fast", resumed="false") == 3
        assert value(after, "stalwart_runs_completed_total", agent="fast") == 3
        assert (
            value(after, "stalwart_runs_failed_total", agent="failing", error_type="ValueError")
            == 1
        )
        assert value(after, "stalwart_runs_failed_total", agent="looping") == 1
        # 3 fast runs x 3 steps and more, all ok; the failing run's step failed (after retries).
        assert value(after, "stalwart_step_duration_seconds_count", kind="step", outcome="ok") >= 9
        assert (
            value(after, "stalwart_step_duration_seconds_count", kind="step", outcome="error") == 1
        )
        assert value(after, "stalwart_step_duration_seconds_count", kind="tool") >= 4
        assert value(after, "stalwart_step_retries_total", kind="step") == 3  # 2 failing + 1 flaky
        assert value(after, "stalwart_journal_append_duration_seconds_count") > value(
            before, "stalwart_journal_append_duration_seconds_count"
        )
        assert value(after, "stalwart_lease_renew_duration_seconds_count") >= 1
        assert found(after, "stalwart_breaker_state", worker="m1", breaker="tool:search") == [0.0]
        assert found(after, "stalwart_runs_active", worker="m1") == [0.0]

        # A run waiting for a signal gives its slot up: the supervisor counts it.
        waiting = await client.submit("approval", 5)

        async def passivated() -> bool:
            if (await waiting.status()).status != "waiting":
                return False
            return value(await scrape(sport), "stalwart_runs_passivated") == 1

        await eventually(passivated, timeout=20)
        assert value(await scrape(wport), "stalwart_runs_passivations_total", agent="approval") == 1
        await waiting.signal("approve", "yes")
        assert (await waiting.result(timeout=20))["decision"] == "yes"
        woken = await reaches(wport, "stalwart_steps_replayed_total", 1, agent="approval")
        assert value(woken, "stalwart_runs_started_total", agent="approval", resumed="true") == 1
    finally:
        sup.kill()


# --------------------------------------------------------------------------- logs


def test_a_logged_tracebacks_url_credentials_are_masked(capsys: pytest.CaptureFixture[str]) -> None:
    """Through the configured chain: the traceback is rendered after ``redact`` ran, and the
    pass after the renderer masks what the exception's message carries; secret keys and
    payloads bound on the line are handled by ``redact`` as ever."""
    import logging

    import structlog

    from stalwart._logging import configure_logging

    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        configure_logging("info", "json")
        log = structlog.get_logger("test.redact")
        try:
            raise ConnectionError("cannot reach redis://app:hunter2@cache:6379/0")
        except ConnectionError:
            log.exception("store.failed", api_key="sk-123", result={"card": "4242"})
        line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    finally:
        structlog.configure(**saved)
        root.handlers, root.level = handlers, level
    text = json.dumps(line)
    assert "hunter2" not in text and "redis://app:***@cache:6379/0" in text
    assert line["api_key"] == "***" and "4242" not in text
    assert line["exception"], line  # the traceback is there, only masked


def test_redact_masks_secrets_and_hides_payloads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(telemetry.PAYLOADS_ENV, raising=False)
    event = {
        "event": "x",
        "result": {"card": "4242"},
        "api_key": "sk-123",
        "url": "redis://user:hunter2@redis:6379/0",
        "input_tokens": 10,
    }
    out = telemetry.redact(None, "info", dict(event))
    assert out["api_key"] == "***"
    assert "4242" not in json.dumps(out)
    assert out["url"] == "redis://user:***@redis:6379/0"
    assert out["input_tokens"] == 10
    monkeypatch.setenv(telemetry.PAYLOADS_ENV, "1")
    shown = telemetry.redact(None, "info", dict(event))
    assert shown["result"] == {"card": "4242"} and shown["api_key"] == "***"


def _log_lines(text: str) -> list[dict[str, Any]]:
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines, "the worker logged nothing"
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:  # pragma: no cover - the failure message
            raise AssertionError(f"not a JSON object: {line!r}") from None
    assert all(isinstance(p, dict) for p in parsed)
    return parsed


async def test_json_logs_are_one_object_per_line_with_the_run_bound(
    client: Client, workers: WorkerFactory
) -> None:
    quiet = await workers("logs-a", STALWART_LOG_LEVEL="debug")
    handle = await client.submit("typed", {"sku": "secret-sku", "qty": 2})
    assert (await handle.result(timeout=20))["total"] == 4
    failing = await client.submit("failing", "private-arg")
    with pytest.raises(RunFailed):
        await failing.result(timeout=30)

    async def finished_logged() -> list[dict[str, Any]] | None:
        lines = _log_lines(quiet.log_text())
        done = [e for e in lines if e.get("event") == "run.finished"]
        return lines if len(done) == 2 else None

    lines = await eventually(finished_logged, timeout=10)
    run_lines = [e for e in lines if e.get("run_id") == handle.run_id]
    events = {e["event"] for e in run_lines}
    assert {"step.completed", "run.finished"} <= events, events
    for e in run_lines:  # bound by the actor, not passed by each call
        assert e["worker"] == "logs-a" and e["epoch"] > 0 and e["agent"] == "typed", e
    step = next(e for e in run_lines if e["event"] == "step.completed")
    assert step["step"] == "step:price" and step["kind"] == "step"
    assert "result" not in step
    retry = next(e for e in lines if e.get("event") == "step.retrying")
    assert retry["run_id"] == failing.run_id and retry["step"] == "step:boom"
    assert "secret-sku" not in quiet.log_text()

    loud = await workers("logs-b", STALWART_LOG_LEVEL="debug", STALWART_LOG_PAYLOADS="1")
    quiet.kill()
    shown = await client.submit("typed", {"sku": "abc", "qty": 3})
    await shown.result(timeout=20)

    async def result_logged() -> dict[str, Any] | None:
        return next(
            (
                e
                for e in _log_lines(loud.log_text())
                if e.get("event") == "step.completed" and e.get("run_id") == shown.run_id
            ),
            None,
        )

    assert (await eventually(result_logged, timeout=10))["result"] == "3"


# --------------------------------------------------------------------------- records
# The runtime hands telemetry plain records; these pin the conversion (actors/_telemetry.py,
# supervisor/_telemetry.py) and what the hooks make of it, without servers.


@dataclass
class _FakeActor:
    """An actor by shape: what the conversion reads, nothing more."""

    run_id: str = "r1"
    epoch: int = 3
    worker_id: str = "w1"
    spec: Any = field(default_factory=lambda: SimpleNamespace(name="agent"))
    policies: Policies = field(default_factory=Policies)
    trace_parent: telemetry.TraceParent = telemetry.NO_PARENT
    lost: bool = False
    abandoned: bool = False
    draining: bool = False
    steps_replayed: int = 0
    steps_live: int = 0


def _step_done(kind: str, name: str, **kw: Any) -> StepDone:
    return StepDone(
        key=f"{kind}:{name}/1", kind=kind, name=name, fp="f", result=encode_value({"a": 1}),
        epoch=3, worker="w1", at=0.0, duration=0.25, **kw,
    )  # fmt: skip


def test_a_live_model_step_becomes_one_span_with_usage_and_cost(
    memory_spans: InMemorySpanExporter,
) -> None:
    actor = _FakeActor()
    spec = SimpleNamespace(key="model:gpt-4o/1", kind="model", name="gpt-4o")
    entry = _step_done("model", "gpt-4o", model="gpt-4o-2024", input_tokens=1000, output_tokens=10)
    with actor_telemetry.step_scope(actor, spec):
        actor_telemetry.step_journaled(actor, entry)
    (span,) = memory_spans.get_finished_spans()
    assert span.name == "chat gpt-4o" and span.kind == SpanKind.CLIENT
    attrs = dict(span.attributes or {})
    assert attrs["stalwart.run_id"] == "r1" and attrs["stalwart.epoch"] == 3
    assert attrs["stalwart.worker"] == "w1" and attrs["stalwart.outcome"] == "completed"
    assert attrs["gen_ai.response.model"] == "gpt-4o-2024"
    assert attrs["gen_ai.usage.input_tokens"] == 1000
    # Priced from the run's limits: "gpt-4o-2024" takes the listed "gpt-4o".
    assert attrs["stalwart.cost_usd"] == pytest.approx((1000 * 2.50 + 10 * 10.00) / 1e6)
    assert "stalwart.step.result" not in attrs  # payloads stay out unless asked for


def test_a_failed_step_and_a_retry_mark_the_span(memory_spans: InMemorySpanExporter) -> None:
    actor = _FakeActor()
    error = ErrorInfo("ValueError", "bad input")
    attempt = StepAttempt(
        key="tool:lookup/1", kind="tool", name="lookup", fp="f", attempt=1, error=error,
        delay=0.5, epoch=3, worker="w1", at=0.0, duration=0.1,
    )  # fmt: skip
    failed = StepError(
        key="tool:lookup/1", kind="tool", name="lookup", fp="f", error=error, epoch=3,
        worker="w1", at=0.0, duration=0.1, attempt=2,
    )  # fmt: skip
    with actor_telemetry.wait_scope(actor, "signal:approve", "approve"):
        pass
    with actor_telemetry.step_scope(
        actor, SimpleNamespace(key="tool:lookup/1", kind="tool", name="lookup")
    ):
        actor_telemetry.step_retried(attempt)
        actor_telemetry.step_journaled(actor, failed)
    wait, tool = memory_spans.get_finished_spans()
    assert (
        wait.name == "wait approve"
        and dict(wait.attributes or {})["stalwart.step_kind"] == "signal"
    )
    assert tool.name == "execute_tool lookup"
    assert dict(tool.attributes or {})["error.type"] == "ValueError"
    assert tool.status.status_code.name == "ERROR"
    (retry,) = tool.events
    assert retry.name == "stalwart.step.retry"
    assert dict(retry.attributes or {})["stalwart.retry_delay"] == 0.5


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        ({}, "stopped"),
        ({"draining": True}, "released"),
        ({"abandoned": True, "draining": True}, "abandoned"),
        ({"lost": True, "abandoned": True}, "lease_lost"),
    ],
)
def test_a_placement_that_neither_finished_nor_passivated_says_why(
    memory_spans: InMemorySpanExporter, state: dict[str, bool], reason: str
) -> None:
    actor = _FakeActor(steps_replayed=4, steps_live=2)
    with actor_telemetry.run_scope(actor):
        for name, flag in state.items():
            setattr(actor, name, flag)  # read when the placement ends, not when it starts
    (span,) = memory_spans.get_finished_spans()
    assert span.name == "run agent"
    attrs = dict(span.attributes or {})
    assert attrs["stalwart.outcome"] == reason
    assert (attrs["stalwart.steps.replayed"], attrs["stalwart.steps.live"]) == (4, 2)


def test_a_finished_run_outcome_wins_over_how_the_placement_left(
    memory_spans: InMemorySpanExporter,
) -> None:
    actor = _FakeActor(lost=True)
    finished = Finished(
        status="failed", epoch=3, worker="w1", at=0.0, error=ErrorInfo("Boom", "it broke")
    )
    with actor_telemetry.run_scope(actor):
        actor_telemetry.run_finished(actor, finished)
    (span,) = memory_spans.get_finished_spans()
    assert dict(span.attributes or {})["stalwart.outcome"] == "failed"
    assert span.status.description == "Boom: it broke"


def test_the_gauges_read_snapshots_while_their_owner_lives() -> None:
    class Worker:
        worker_id = "gauge-w"
        hosted = ("r1", "r2")
        capacity = 5
        free_slots = 3

        def breaker_states(self) -> dict[str, str]:  # its own and the shared ones
            return {"tool:x": "open"}

        def concurrency_usage(self) -> tuple[tuple[str, str, int, int], ...]:
            return (("per-tenant", "acme", 2, 5),)

    class Supervisor:
        supervisor_id = "gauge-s"
        is_leader = True
        pending_requests: ClassVar[dict[tuple[str, str], int]] = {("gauge-agent", ""): 3}

    worker, sup = Worker(), Supervisor()
    actor_telemetry.watch_worker(worker)
    supervisor_telemetry.watch_supervisor(sup)
    supervisor_telemetry.supervisor_pass(sup, ["r1", "r2"])
    record = SimpleNamespace(status="waiting")
    supervisor_telemetry.run_seen(sup, "r1", record)  # type: ignore[arg-type]
    supervisor_telemetry.run_seen(sup, "r2", None)
    workers = {w.worker_id: w for w in _metrics._worker_snapshots()}
    assert workers["gauge-w"] == telemetry.WorkerSnapshot(
        "gauge-w", 2, {"tool:x": "open"}, 5, 3, (("per-tenant", "acme", 2, 5),)
    )
    waiting = [o for o in _metrics._concurrency(3)(None) if o.attributes["worker"] == "gauge-w"]  # type: ignore[arg-type]
    assert [(o.value, o.attributes["key"]) for o in waiting] == [(5, "acme")]
    sups = {s.supervisor_id: s for s in _metrics._supervisor_snapshots()}
    assert sups["gauge-s"].leader is True
    assert sups["gauge-s"].pending == {("gauge-agent", "default"): 3}
    assert _metrics._run_status["gauge-s"] == {"r1": "waiting"}
    del worker, sup
    gc.collect()
    assert "gauge-w" not in {w.worker_id for w in _metrics._worker_snapshots()}
    assert "gauge-s" not in {s.supervisor_id for s in _metrics._supervisor_snapshots()}
    assert "gauge-s" not in _metrics._run_status


# The observability API (its __all__, star import, docstrings) is pinned in test_public_api.py.
