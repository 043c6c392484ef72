"""OpenTelemetry tracing: set-up from the environment, trace-context carriers, a file exporter.

Tracing is off unless configured: the spans Stalwart starts then go to OpenTelemetry's no-op
tracer, which costs a function call and no allocation worth measuring. A process turns it on
with :func:`configure_tracing` (the ``stalwart`` command does, from ``STALWART_TRACING``), or by
installing its own global ``TracerProvider`` before it submits or serves runs.

The trace context crosses processes in two places, both W3C ``traceparent`` carriers: the NATS
headers of every run request (the messaging convention; there is no maintained nats-py
instrumentation, so it is injected by hand) and the run record in Redis (``trace``), written
once when the run is created. A worker that resumes a run after a crash reads the record, so
every placement of the run continues the submitter's trace.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)

from stalwart._version import __version__
from stalwart.errors import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor

TRACING_ENV = "STALWART_TRACING"
"""``otlp``, ``console``, ``file:<path>`` or ``off``. Unset: ``otlp`` when
``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``) is set, else ``off``."""

_SCOPE = "stalwart"
_override: trace.TracerProvider | None = None
_installed: TracerProvider | None = None
_tracer: trace.Tracer | None = None
_active = False
_checked_at = float("-inf")
_RECHECK = 1.0


def tracing_active() -> bool:
    """Whether Stalwart's spans record anywhere: a provider was installed or set for it.

    The per-step hooks skip all span work when not. Re-checked at most once a second, so a
    provider an application installs after start-up is picked up without a cost per step.
    """
    global _active, _checked_at
    now = time.monotonic()
    if now - _checked_at >= _RECHECK:
        _checked_at = now
        provider = _override if _override is not None else trace.get_tracer_provider()
        _active = not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)
    return _active


def _changed() -> None:
    global _tracer, _checked_at
    _tracer = None
    _checked_at = float("-inf")


def tracer() -> trace.Tracer:
    """The tracer Stalwart's spans come from (the global provider's, unless overridden)."""
    global _tracer
    if _tracer is None:
        # Through the API's proxy when no provider is set yet: it follows a provider that
        # the application installs later, and is a no-op until then.
        provider = _override if _override is not None else trace.get_tracer_provider()
        _tracer = provider.get_tracer(_SCOPE, __version__)
    return _tracer


def set_tracer_provider(provider: trace.TracerProvider | None) -> None:
    """Send Stalwart's spans to ``provider`` instead of the global one (None: back to global).

    For tests and for applications that keep Stalwart's spans apart; the global provider
    (``opentelemetry.trace.set_tracer_provider``) is the usual way.
    """
    global _override
    _override = provider
    _changed()


def service_resource(service: str) -> Resource:
    """This process as traces and metrics name it (shared by both providers).

    ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` win over the default ``service``.
    """
    attrs: dict[str, Any] = {"service.version": __version__}
    if not os.environ.get("OTEL_SERVICE_NAME"):
        attrs["service.name"] = service
    return Resource.create(attrs)


def _processor(spec: str) -> SpanProcessor:
    if spec == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return BatchSpanProcessor(OTLPSpanExporter())
    if spec == "console":
        # stderr, one span a line: stdout carries command output (`stalwart history --json`).
        return SimpleSpanProcessor(
            ConsoleSpanExporter(out=sys.stderr, formatter=lambda s: s.to_json(indent=None) + "\n")
        )
    if spec.startswith("file:") and len(spec) > len("file:"):
        # Synchronous, so a worker that is SIGKILLed has written every span it ended.
        return SimpleSpanProcessor(JsonLinesSpanExporter(spec[len("file:") :]))
    raise ConfigurationError(
        f"{TRACING_ENV} must be otlp, console, file:<path> or off, got {spec!r}"
    )


def tracing_spec(spec: str | None = None) -> str:
    """The tracing setting in force: ``spec``, else ``STALWART_TRACING``, else the OTLP default."""
    value = (spec if spec is not None else os.environ.get(TRACING_ENV, "")).strip()
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return "off"
    if value:
        return value
    otlp = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    )
    return "otlp" if otlp else "off"


def configure_tracing(service: str, spec: str | None = None) -> bool:
    """Install a global ``TracerProvider`` that exports as ``spec`` says; True if tracing is on.

    Does nothing when the application already installed a provider of its own (Stalwart's
    spans then go there) or when the setting is ``off``. Raises :class:`ConfigurationError`
    for an unknown setting.
    """
    global _installed
    resolved = tracing_spec(spec)
    if resolved == "off":
        return False
    processor = _processor(resolved)
    if _installed is not None:
        _installed.add_span_processor(processor)
        return True
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        processor.shutdown()
        return True  # the application's own provider is in charge
    provider = TracerProvider(resource=service_resource(service))
    provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    _installed = provider
    _changed()
    return True


def shutdown_tracing() -> None:
    """Flush and stop the provider :func:`configure_tracing` installed (at process exit)."""
    if _installed is not None:
        _installed.shutdown()


# -- carriers ---------------------------------------------------------------------------------


def current_carrier() -> dict[str, str]:
    """The current trace context as a W3C carrier (empty when no span is recording)."""
    carrier: dict[str, str] = {}
    if tracing_active():
        propagate.inject(carrier)
    return carrier


def inject_headers(headers: dict[str, str]) -> dict[str, str]:
    """Add the current trace context to NATS message headers; returns ``headers``."""
    if tracing_active():
        propagate.inject(headers)
    return headers


def carrier_json(carrier: Mapping[str, str]) -> str:
    """A carrier as the run record stores it (empty string for an empty carrier)."""
    return json.dumps(dict(carrier), separators=(",", ":"), sort_keys=True) if carrier else ""


def context_from(carrier: Mapping[str, str] | str | None) -> Context | None:
    """The remote context in a carrier (a dict, NATS headers or the record's JSON), if any."""
    if not carrier:
        return None
    if isinstance(carrier, str):
        try:
            loaded = json.loads(carrier)
        except ValueError:
            return None
        if not isinstance(loaded, dict):
            return None
        carrier = {str(k): str(v) for k, v in loaded.items()}
    if "traceparent" not in carrier:
        return None
    ctx = propagate.extract(carrier)
    if not trace.get_current_span(ctx).get_span_context().is_valid:
        return None
    return ctx


# -- a span exporter for tests and debugging -----------------------------------------------------


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """One finished span as plain JSON-able data (ids in hex, as trace UIs show them)."""
    ctx = span.get_span_context()
    assert ctx is not None
    return {
        "trace_id": f"{ctx.trace_id:032x}",
        "span_id": f"{ctx.span_id:016x}",
        "parent_id": f"{span.parent.span_id:016x}" if span.parent is not None else None,
        "name": span.name,
        "kind": span.kind.name,
        "start": span.start_time,
        "end": span.end_time,
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
        "events": [{"name": e.name, "attributes": dict(e.attributes or {})} for e in span.events],
        "links": [
            {
                "trace_id": f"{link.context.trace_id:032x}",
                "span_id": f"{link.context.span_id:016x}",
                "attributes": dict(link.attributes or {}),
            }
            for link in span.links
        ],
        "service": str(span.resource.attributes.get("service.name", "")),
    }


class JsonLinesSpanExporter(SpanExporter):
    """Appends each finished span to a file as one JSON object per line.

    Every export is one ``write`` to a file opened with ``O_APPEND``, so several processes can
    share the file, and nothing is buffered: a process killed later has already written
    every span it ended. Meant for tests and debugging; use OTLP in production.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Write ``spans``."""
        data = "".join(json.dumps(span_record(s), default=str) + "\n" for s in spans).encode()
        try:
            with self._lock:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    os.write(fd, data)
                finally:
                    os.close(fd)
        except OSError:
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Nothing to release: the file is opened per export."""

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Always flushed."""
        return True


def read_span_file(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The spans a :class:`JsonLinesSpanExporter` wrote (an absent file has none)."""
    try:
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []
