"""Telemetry: the spans, metrics and log context the runtime reports as it works.

A leaf: it imports nothing of Stalwart's runtime (only OpenTelemetry, structlog and Stalwart's
leaf modules), so every layer can report through it, the broker and the checkpoint store
included. The runtime tells it what happened with one small frozen record per event
(:class:`RunPlaced`, :class:`StepJournaled`, :class:`RunEnded`, :class:`WorkerSnapshot` ...),
built next to each caller (``actors/_telemetry.py``, ``supervisor/_telemetry.py``); it never
sees a live actor, worker, supervisor or journal entry.

- **Traces** (:func:`configure_tracing`): the client's ``submit`` span is the parent of every
  placement of the run (``run <agent>``), across processes and crashes; one span per live step.
- **Metrics** (:func:`configure_metrics`): counters and histograms as the runtime reports, and
  gauges over the snapshots that workers and supervisors hand in when scraped.
- **Logs**: run id, step key, worker and epoch bound to every line of a run; payloads and
  secrets kept out (:func:`redact`), trace ids added (:func:`add_trace_ids`).

The read side (run history, replay) is :mod:`stalwart.observability`, above the runtime.
"""

from __future__ import annotations

from stalwart.telemetry._configure import configure, shutdown
from stalwart.telemetry._hooks import (
    LOG_PAYLOADS,
    StepScope,
    dead_lettered,
    failover,
    journal_appended,
    producer_span,
    resume_span,
    run_finished,
    run_loaded,
    run_passivated,
    run_scope,
    run_seen,
    step_journaled,
    step_retried,
    supervisor_pass,
    timed_renewal,
    trace_parent,
    watch_supervisor,
    watch_worker,
)
from stalwart.telemetry._logs import PAYLOADS_ENV, add_trace_ids, payloads_enabled, preview, redact
from stalwart.telemetry._metrics import (
    METRICS_ADDR_ENV,
    METRICS_PORT_ENV,
    configure_metrics,
    metrics_port,
    shutdown_metrics,
)
from stalwart.telemetry._records import (
    NO_PARENT,
    ReconcilePass,
    RunEnded,
    RunLeft,
    RunLoaded,
    RunPlaced,
    RunResumed,
    RunSeen,
    StepJournaled,
    StepRetried,
    StepStarted,
    SupervisorSnapshot,
    TraceParent,
    WorkerSnapshot,
)
from stalwart.telemetry._tracing import (
    TRACING_ENV,
    JsonLinesSpanExporter,
    carrier_json,
    configure_tracing,
    inject_headers,
    read_span_file,
    set_tracer_provider,
    shutdown_tracing,
)

__all__ = [
    "LOG_PAYLOADS",
    "METRICS_ADDR_ENV",
    "METRICS_PORT_ENV",
    "NO_PARENT",
    "PAYLOADS_ENV",
    "TRACING_ENV",
    "JsonLinesSpanExporter",
    "ReconcilePass",
    "RunEnded",
    "RunLeft",
    "RunLoaded",
    "RunPlaced",
    "RunResumed",
    "RunSeen",
    "StepJournaled",
    "StepRetried",
    "StepScope",
    "StepStarted",
    "SupervisorSnapshot",
    "TraceParent",
    "WorkerSnapshot",
    "add_trace_ids",
    "carrier_json",
    "configure",
    "configure_metrics",
    "configure_tracing",
    "dead_lettered",
    "failover",
    "inject_headers",
    "journal_appended",
    "metrics_port",
    "payloads_enabled",
    "preview",
    "producer_span",
    "read_span_file",
    "redact",
    "resume_span",
    "run_finished",
    "run_loaded",
    "run_passivated",
    "run_scope",
    "run_seen",
    "set_tracer_provider",
    "shutdown",
    "shutdown_metrics",
    "shutdown_tracing",
    "step_journaled",
    "step_retried",
    "supervisor_pass",
    "timed_renewal",
    "trace_parent",
    "watch_supervisor",
    "watch_worker",
]
