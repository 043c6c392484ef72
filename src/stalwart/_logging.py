"""structlog set-up: JSON lines in production, readable lines in a terminal.

Every line a run produces carries its run id, agent, worker and epoch (and the step key
inside a step), bound as context variables by the actor (``stalwart.observability``), plus
the trace and span ids when tracing is on. Payloads are left out unless
``STALWART_LOG_PAYLOADS=1``; secrets are masked always. Standard-library loggers (nats-py,
redis-py, OpenTelemetry) go through the same renderer, so a JSON log stays one object a line.
"""

from __future__ import annotations

import logging
import os
import sys

import structlog

from stalwart.errors import ConfigurationError
from stalwart.telemetry import add_trace_ids, redact
from stalwart.telemetry._logs import redact_rendered

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("json", "console")
LOG_PAYLOADS_VALUES = ("1", "true", "yes", "on", "0", "false", "no", "off")


def _choice(value: str | None, env: str, accepted: tuple[str, ...]) -> str | None:
    """``value`` (else ``env``'s value), lowercased; a value not in ``accepted`` is an error."""
    raw = value if value is not None else os.environ.get(env, "")
    if not raw.strip():
        return None
    if raw.strip().lower() not in accepted:
        # A misspelt level or format used to be ignored silently: say so instead.
        raise ConfigurationError(f"{env}={raw!r} is not one of {', '.join(accepted)}")
    return raw.strip().lower()


def configure_logging(level: str | None = None, fmt: str | None = None) -> None:
    """Configure structlog; ``STALWART_LOG_LEVEL`` / ``STALWART_LOG_FORMAT`` (json|console).

    Raises :class:`ConfigurationError` for a level or format that is not one of the accepted
    values (before changing anything).
    """
    level = (_choice(level, "STALWART_LOG_LEVEL", LOG_LEVELS) or "info").upper()
    # Checked here, once: a misspelt "ture" would otherwise silently mean off.
    _choice(None, "STALWART_LOG_PAYLOADS", LOG_PAYLOADS_VALUES)
    fmt = _choice(fmt, "STALWART_LOG_FORMAT", LOG_FORMATS) or (
        "console" if sys.stderr.isatty() else "json"
    )
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_trace_ids,
        redact,
    ]
    numeric = getattr(logging, level, logging.INFO)
    structlog.configure(
        processors=[
            *shared,
            # Tracebacks as data, without local variables: those hold payloads and secrets.
            *(
                [
                    structlog.processors.ExceptionRenderer(
                        structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
                    )
                ]
                if fmt == "json"
                else []
            ),
            redact_rendered,  # a rendered traceback's messages may carry URLs with passwords
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(max(numeric, logging.INFO))  # libraries' debug output is not ours to show
