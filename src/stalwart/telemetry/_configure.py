"""Turning telemetry on and off for a process (the ``stalwart`` command does it from settings)."""

from __future__ import annotations

from stalwart.telemetry import _metrics, _tracing


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
    _tracing.configure_tracing(service, tracing)
    _metrics.configure_metrics(service, _metrics.metrics_port(metrics_port), metrics_addr)


def shutdown() -> None:
    """Flush spans and stop the metrics endpoint (at process exit)."""
    _tracing.shutdown_tracing()
    _metrics.shutdown_metrics()
