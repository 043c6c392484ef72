"""Checkpoint blobs sealed with the process's payload codec (``docs/security.md``).

The saver stores LangGraph's serialized values (checkpoints, channel values, pending writes,
metadata) in Redis. With payload encryption on, every such value is sealed after the serde
wrote it and opened before the serde reads it, whichever serde the saver has (its own safe
one, one of the user's, or a copy LangGraph's strict-mode compile derived), so the allow-list
check still reads the clear value. Blobs written before encryption was turned on are read
as they are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stalwart.checkpoints import open_bytes, seal_bytes

if TYPE_CHECKING:
    from langgraph.checkpoint.serde.base import SerializerProtocol


class SealedSerde:
    """``inner`` with every non-empty value sealed on write and opened on read."""

    def __init__(self, inner: SerializerProtocol) -> None:
        self.inner = inner

    def dumps_typed(self, obj: Any) -> tuple[str, bytes]:
        """The inner serde's ``(format, bytes)``, the bytes sealed."""
        kind, data = self.inner.dumps_typed(obj)
        return kind, seal_bytes(data) if data else data

    def loads_typed(self, data: tuple[str, bytes]) -> Any:
        """The value the inner serde reads from the opened bytes."""
        kind, payload = data
        return self.inner.loads_typed((kind, open_bytes(payload) if payload else payload))
