"""What each API route does, over a connected :class:`Client` (no HTTP concerns here).

Reads go through :mod:`stalwart.operations` (the read model the CLI uses too); actions
through the same :class:`Client` methods as the CLI (cancel, signal, approve, fork, retry),
so the console adds no second way of changing a run.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import msgspec

from stalwart import operations
from stalwart._ids import check_run_id
from stalwart.errors import InvalidRequestError

if TYPE_CHECKING:
    from starlette.datastructures import QueryParams

    from stalwart.client import Client


class Body(msgspec.Struct, forbid_unknown_fields=True):
    """What an action route accepts (each action reads the fields it needs)."""

    reason: str = "cancelled from the console"
    name: str = ""
    payload: Any = None
    call_id: str = ""
    approve: bool = True
    message: str | None = None
    tool: str | None = None
    args_hash: str | None = None
    at: str = ""


class Reads:
    """The read routes: each takes the query parameters (and a run id) and returns a value."""

    def __init__(self, client: Client) -> None:
        self.client = client

    async def runs(self, q: QueryParams) -> operations.RunPage:
        statuses = [s for v in q.getlist("status") for s in v.split(",") if s]
        query = operations.RunQuery(
            status=statuses or None,
            agent=q.get("agent") or None,
            since=number(q.get("since"), "since"),
            until=number(q.get("until"), "until"),
            search=q.get("search") or None,
            limit=int(number(q.get("limit"), "limit") or 50),
            cursor=q.get("cursor") or None,
        )
        return await operations.list_runs(self.client, query)

    async def run(self, run_id: str) -> operations.RunDetail:
        return await operations.run_detail(self.client, check_run_id(run_id))

    async def workers(self) -> list[operations.WorkerView]:
        return await operations.workers(self.client)

    async def agents(self) -> list[operations.AgentView]:
        return await operations.agents(self.client)


class Actions:
    """The mutating routes: ``name(run_id, body)`` -> a small JSON-able answer."""

    NAMES = ("cancel", "signal", "approve", "fork", "retry")

    def __init__(self, client: Client) -> None:
        self.client = client

    async def cancel(self, run_id: str, body: Body) -> dict[str, str]:
        return {"outcome": await self.client.handle(run_id).cancel(body.reason)}

    async def signal(self, run_id: str, body: Body) -> dict[str, str]:
        if not body.name:
            raise InvalidRequestError("a signal needs a name")
        return {"outcome": await self.client.handle(run_id).signal(body.name, body.payload)}

    async def approve(self, run_id: str, body: Body) -> dict[str, str]:
        handle = self.client.handle(run_id)
        if body.approve:
            outcome = await handle.approve(
                body.call_id, tool=body.tool, args_hash=body.args_hash, message=body.message
            )
        else:
            outcome = await handle.reject(
                body.call_id, body.message, tool=body.tool, args_hash=body.args_hash
            )
        return {"outcome": outcome}

    async def fork(self, run_id: str, body: Body) -> dict[str, str]:
        if not body.at:
            raise InvalidRequestError("fork needs the step to fork at ('at')")
        return {"run_id": (await self.client.fork(run_id, at=body.at)).run_id}

    async def retry(self, run_id: str, body: Body) -> dict[str, str]:
        return {"run_id": (await self.client.retry(run_id)).run_id}


def number(text: str | None, what: str) -> float | None:
    """A query parameter that must be a finite number >= 0 (None when absent)."""
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise InvalidRequestError(f"{what} must be a number >= 0, got {text[:40]!r}")
    return value


def decode_body(raw: bytes) -> Body:
    """An action's JSON body ({} when empty), or :class:`InvalidRequestError` saying why not."""
    if not raw.strip():
        return Body()
    try:
        return msgspec.json.decode(raw, type=Body)
    except msgspec.DecodeError as exc:
        raise InvalidRequestError(f"bad request body: {exc}") from None
