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
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stalwart.observability._history import (
    AttemptError,
    History,
    Placement,
    StepRow,
    build_history,
    format_history,
    history_json,
)
from stalwart.observability._logs import PAYLOADS_ENV, add_trace_ids, payloads_enabled, redact
from stalwart.observability._metrics import (
    METRICS_ADDR_ENV,
    METRICS_PORT_ENV,
    configure_metrics,
    metrics_port,
    shutdown_metrics,
)
from stalwart.observability._tracing import (
    TRACING_ENV,
    JsonLinesSpanExporter,
    configure_tracing,
    read_span_file,
    set_tracer_provider,
    shutdown_tracing,
)

if TYPE_CHECKING:
    from stalwart.actors._replay import ReplayReport, replay_run


def configure(
    service: str,
    *,
    tracing: str | None = None,
    metrics_port: int | None = None,
    metrics_addr: str | None = None,
) -> None:
    """Turn on what the settings and environment ask for: tracing and the metrics endpoint.

    ``service`` names this process in traces (``OTEL_SERVICE_NAME`` wins). Both are off by
    default; see :func:`configure_tracing` and :func:`configure_metrics`.
    """
    from stalwart.observability._metrics import metrics_port as _port

    configure_tracing(service, tracing)
    configure_metrics(service, _port(metrics_port), metrics_addr)


def shutdown() -> None:
    """Flush spans and stop the metrics endpoint (at process exit)."""
    shutdown_tracing()
    shutdown_metrics()


def __getattr__(name: str) -> Any:
    # Replay drives an actor, and the actors call into this package: import it on first use.
    if name in ("ReplayReport", "replay_run"):
        from stalwart.actors import _replay

        return getattr(_replay, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
