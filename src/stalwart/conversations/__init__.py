"""Conversations across runs: the steering that needs both NATS and Redis.

The store (``stalwart.checkpoints.ConversationStore``) keeps who holds a conversation, its
queue and its items; this package hands the conversation on when a run ends (waking the
next run through the ordinary signal path), cancels the running turn for ``interrupt``, and
repairs a conversation left held by a run that ended without releasing it. Workers, the
supervisor and the client all use it. See docs/conversations.md.
"""

from stalwart.conversations._handoff import (
    WAKE_SIGNAL,
    interrupt,
    recover,
    release,
    release_ended,
)

__all__ = ["WAKE_SIGNAL", "interrupt", "recover", "release", "release_ended"]
