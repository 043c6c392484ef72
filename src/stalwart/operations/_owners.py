"""Who owns a run now: the lease bucket is the truth, the run record only says who owned it
last. A run whose record says ``running`` and whose lease nobody holds (its worker drained,
died, or lost its lease) is shown as such instead of as running on that worker."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from stalwart.broker import Broker
    from stalwart.checkpoints import RunRecord

RunPlacement = Literal["ended", "owned", "awaiting_worker", "queued", "passivated"]
"""Where a run stands with the workers, from its record and its lease:

- ``ended``: completed, failed or cancelled;
- ``owned``: a worker holds its lease now (``owner``);
- ``awaiting_worker``: it was placed (``running``) but nobody holds its lease: its worker
  drained, died or lost the lease, and no worker has taken it back yet;
- ``queued``: accepted, no worker has placed it yet;
- ``passivated``: waiting (for a signal or a timer) with no worker hosting it, as designed.
"""


async def lease_holders(broker: Broker, run_ids: list[str]) -> dict[str, str]:
    """``{run_id: worker id}`` of the leases held now among ``run_ids`` (free ones left out)."""
    states = await asyncio.gather(*(broker.leases.state(rid) for rid in run_ids))
    return {
        rid: st.holder for rid, st in zip(run_ids, states, strict=True) if st.holder is not None
    }


def placement_of(record: RunRecord, owner: str) -> RunPlacement:
    """Where ``record``'s run stands, given the lease holder ``owner`` ("" for none)."""
    if record.terminal:
        return "ended"
    if owner:
        return "owned"
    if record.status == "waiting":
        return "passivated"
    if record.status == "accepted":
        return "queued"
    return "awaiting_worker"
