"""Typed failure outcomes: what an adapter does with an exception a step raised.

A step can fail in two ways that an adapter must keep apart. A tool that raised (a
:class:`~stalwart.errors.StepFailed`, live or replayed) is the tool's error: the framework
shows it to the model, as it would without Stalwart. Anything else ends the run (a lost
lease, a drain, a cancel, a non-determinism, an at-most-once tool whose outcome is unknown):
frameworks that turn exceptions into error results must not swallow it.
"""

from __future__ import annotations

from typing import Literal

from stalwart.errors import StepFailed

Outcome = Literal["tool_error", "stop"]
"""``tool_error``: the framework may show it to the model; ``stop``: the run must end."""

# A tool with at-most-once semantics that died mid-call: shown to the model as an error,
# the model could simply call it again (a second payment).
_STOPPING_STEP_ERRORS = frozenset({"ToolOutcomeUnknown"})


class ToolCallFailed(StepFailed):
    """A tool step failed, live or replayed from the journal.

    It reads as the tool's own error message (``str(exc)``), which is what frameworks show
    the model, so the conversation is the same as without Stalwart and the same on every
    replay; :attr:`error_type` is the original exception's type name.
    """

    def __str__(self) -> str:
        return self.message

    @classmethod
    def of(cls, failed: StepFailed) -> ToolCallFailed:
        """The tool-failure form of a failed step."""
        if isinstance(failed, cls):
            return failed
        return cls(failed.step_key, failed.error_type, failed.message)


def failure_outcome(exc: BaseException) -> Outcome:
    """Whether ``exc``, raised by a step, is the tool's own error or ends the run."""
    if isinstance(exc, StepFailed) and exc.error_type not in _STOPPING_STEP_ERRORS:
        return "tool_error"
    return "stop"
