"""Observability: OpenTelemetry traces and metrics, structured logs, run history and replay.

- **Traces** (:func:`configure_tracing`, ``STALWART_TRACING=otlp|console|file:<path>|off``):
  the client's submit span is the parent of every placement of the run, across processes and
  crashes; one span per live step, with GenAI semantic-convention attributes.
- **Metrics** (:func:`configure_metrics`, ``STALWART_METRICS_PORT``): runs, steps, retries,
  failovers, lease and journal latencies, active and passivated runs, circuit breakers, on a
  Prometheus endpoint.
- **Logs**: structlog, with run id, step key, worker and epoch bound to every line of a run
  and payloads kept out unless ``STALWART_LOG_PAYLOADS=1``.
- **History and replay**: :func:`build_history` (``stalwart history``) and
  :func:`replay_run` (``stalwart replay``), an offline determinism check of new agent code.

This package is the read side, above the runtime: history reads journals, replay drives an
actor. What the runtime reports as it works is :mod:`stalwart.telemetry`, a leaf below it;
its set-up functions are re-exported here, where users have always found them.
"""

from __future__ import annotations

from stalwart.actors._replay import ReplayReport, replay_run
from stalwart.observability._history import (
    AttemptError,
    History,
    Placement,
    StepRow,
    build_history,
    format_history,
    history_json,
)
from stalwart.telemetry import (
    METRICS_ADDR_ENV,
    METRICS_PORT_ENV,
    PAYLOADS_ENV,
    TRACING_ENV,
    JsonLinesSpanExporter,
    add_trace_ids,
    configure,
    configure_metrics,
    configure_tracing,
    metrics_port,
    payloads_enabled,
    read_span_file,
    redact,
    set_tracer_provider,
    shutdown,
)

__all__ = [
    "METRICS_ADDR_ENV",
    "METRICS_PORT_ENV",
    "PAYLOADS_ENV",
    "TRACING_ENV",
    "AttemptError",
    "History",
    "JsonLinesSpanExporter",
    "Placement",
    "ReplayReport",
    "StepRow",
    "add_trace_ids",
    "build_history",
    "configure",
    "configure_metrics",
    "configure_tracing",
    "format_history",
    "history_json",
    "metrics_port",
    "payloads_enabled",
    "read_span_file",
    "redact",
    "replay_run",
    "set_tracer_provider",
    "shutdown",
]
