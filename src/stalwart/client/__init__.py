"""The public client: submit runs, wait for results, follow events, signal, cancel, fork.

The client is thin: each operation is one call on the checkpoint store (what is true) and
one on the broker (who must hear of it); see ``docs/architecture.md``.
"""

from stalwart.client._client import Client
from stalwart.client._handle import RunHandle
from stalwart.client._stream import Chunk, Reset, StepDone, StreamEnd, StreamPart, StreamText

__all__ = [
    "Chunk",
    "Client",
    "Reset",
    "RunHandle",
    "StepDone",
    "StreamEnd",
    "StreamPart",
    "StreamText",
]
