"""Writing Redis as an attacker would: replace a journaled step result in place.

Used by the deserialization-safety tests of every adapter: a real run journals its steps,
the test rewrites one step's result in the journal stream (same position, same step, a
crafted value), then forks the run at that step so that a real worker replays it.
"""

from __future__ import annotations

from typing import Any

import msgspec

from stalwart import Client
from stalwart.checkpoints import StepDone, encode_entry, encode_value

MARKER_MODULE = "tests.adapters.import_marker"
MARKER_ENV = "STALWART_TEST_IMPORT_MARKER"


async def tamper_step(client: Client, run_id: str, key: str, value: Any) -> None:
    """Rewrite the journaled result of step ``key`` of ``run_id`` to ``value``."""
    store = client.store
    entries = await store.read_journal(run_id)
    assert any(isinstance(je.entry, StepDone) and je.entry.key == key for je in entries), key
    stream = store.journal_key(run_id)
    async with store.redis.pipeline(transaction=True) as pipe:
        pipe.delete(stream)
        for je in entries:
            entry = je.entry
            if isinstance(entry, StepDone) and entry.key == key:
                entry = msgspec.structs.replace(entry, result=encode_value(value))
            pipe.xadd(stream, {"d": encode_entry(entry)}, id=f"{je.seq}-0")
        await pipe.execute()
