"""structlog processors: trace ids on every line, payloads and secrets kept out of the logs.

Payloads (step inputs and results, tool arguments, model prompts and answers) are left out
of every log line unless debug payload logging is on (``STALWART_LOG_PAYLOADS=1``): logs are
shipped to places with wider access than the journal. Values under secret-looking keys, and
passwords inside URLs, are masked always.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from opentelemetry import trace

from stalwart._secrets import MASK, is_secret_key, mask_secrets, mask_urls

if TYPE_CHECKING:
    from structlog.typing import EventDict, WrappedLogger

PAYLOADS_ENV = "STALWART_LOG_PAYLOADS"

PAYLOAD_KEYS = frozenset(
    {"input", "result", "args", "kwargs", "payload", "output", "messages", "prompt", "response"}
)
"""Log keys that carry payloads: dropped unless payload logging is on."""

_HIDDEN = "[hidden: set STALWART_LOG_PAYLOADS=1 to log payloads]"


def payloads_enabled() -> bool:
    """Whether debug payload logging is on (``STALWART_LOG_PAYLOADS``)."""
    return os.environ.get(PAYLOADS_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def preview(value: Any, limit: int = 500) -> str:
    """A bounded text form of a payload, for debug logs and span attributes."""
    # Secrets masked here too: previews go to span attributes and debug lines.
    text = mask_urls(value) if isinstance(value, str) else repr(mask_secrets(value))
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def scrub(text: str) -> str:
    """``text`` with the credentials of every URL in it masked (``redis://:***@host``)."""
    return mask_urls(text)


def redact(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """structlog processor: mask secrets always, hide payloads unless payload logging is on.

    Secret-looking keys are masked at any depth of the logged values (a payload's nested
    ``api_key``, a header list's ``Authorization``), and URL credentials in every string.
    """
    for key, value in list(event_dict.items()):
        if is_secret_key(key):
            event_dict[key] = MASK
        elif key in PAYLOAD_KEYS and not payloads_enabled():  # (read only for such a key)
            event_dict[key] = _HIDDEN
        else:
            event_dict[key] = mask_secrets(value)
    return event_dict


def redact_rendered(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """structlog processor after the exception renderer: mask the rendered traceback (its
    messages may carry URLs with passwords). Everything else went through :func:`redact`."""
    if "exception" in event_dict:
        event_dict["exception"] = mask_secrets(event_dict["exception"])
    return event_dict


def add_trace_ids(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """structlog processor: the current span's ``trace_id`` / ``span_id``, to find the trace."""
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event_dict.setdefault("trace_id", f"{ctx.trace_id:032x}")
        event_dict.setdefault("span_id", f"{ctx.span_id:016x}")
    return event_dict
