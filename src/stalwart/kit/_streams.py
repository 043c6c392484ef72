"""What adapters hand their users inside a framework's own stream when an attempt died."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from stalwart.client import Reset

__all__ = ["StreamReset"]


@dataclass(frozen=True, slots=True)
class StreamReset:
    """Drop what you showed of step ``step``: its attempt died (``reason`` ``retry`` or
    ``failover``) and attempt ``attempt`` of epoch ``epoch`` starts over.

    Adapters yield it in their framework's own stream where that stream has room for an
    arbitrary object; a loop that renders text checks ``getattr(item, "type", None) ==
    "stalwart.reset"`` (or ``isinstance(item, StreamReset)``) and clears that step's text.
    See docs/streaming.md.
    """

    type: ClassVar[str] = "stalwart.reset"
    step: str
    epoch: int
    attempt: int
    reason: str

    @classmethod
    def of(cls, reset: Reset) -> StreamReset:
        """The adapter-side object for a client :class:`~stalwart.client.Reset`."""
        return cls(reset.step, reset.epoch, reset.attempt, reset.reason)
