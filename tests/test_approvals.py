"""Approvals bound to the action: real servers, real worker processes, real SIGKILLs.

The agent (``tests/approval_apps.py``) asks for an approval of ``refund(to, amount)`` with the
kit's ``await_approval`` and then pays in a step. What is checked: a bound approval applies;
one for another call, tool or arguments, a bare ``True``, or one that arrives after expiry is
refused with an ``approval.refused`` event (and by the client helper before sending, where it
can tell) while the run keeps waiting; expiry rejects the call (or fails the run); a crash
after the approval resumes without asking again; and a worker running changed code refuses the
approval journaled for the old call and asks again.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from stalwart import Client, RunFailed, RunHandle, Settings
from stalwart.approvals import (
    ApprovalRequest,
    approval_payload,
    check_approval,
    pending_approvals,
    signal_time,
)
from stalwart.checkpoints import JournalEntry, StepDone, encode_value
from stalwart.errors import ApprovalRefusedError
from stalwart.kit import ApprovalPolicy, args_hash
from tests import approval_apps
from tests.conftest import Servers, WorkerFactory, worker_pool
from tests.helpers import (
    eventually,
    execs,
    journal,
    mark_gated,
    open_gate,
    outcome,
    rid,
)
from tests.test_cli import cli as cli_fixture

APP = "tests.approval_apps:app"
cli = cli_fixture  # the `stalwart` command with this test's servers (tests/test_cli.py)
ORDER = {"to": "ana", "amount": 5}


@pytest.fixture
async def ap_workers(
    settings: Settings, servers: Servers, client: Client
) -> AsyncIterator[WorkerFactory]:
    """Worker processes serving ``APP``."""
    async with worker_pool(APP, settings, servers, client) as start:
        yield start


async def pending(handle: RunHandle) -> list[ApprovalRequest]:
    return await handle.pending_approvals()


async def events_of(handle: RunHandle, type: str) -> list[dict[str, Any]]:
    return [ev.data async for ev in handle.events(follow=False) if ev.type == type]


async def refusals(handle: RunHandle, n: int) -> list[str] | None:
    reasons = [d["reason"] for d in await events_of(handle, "approval.refused")]
    return reasons if len(reasons) >= n else None


async def done_steps(client: Client, run_id: str) -> list[str]:
    return [je.entry.key for je in await journal(client, run_id) if isinstance(je.entry, StepDone)]


# -- the pure check (no servers) -----------------------------------------------------------


REQUEST = ApprovalRequest(
    call_id="c1",
    tool="refund",
    args_hash=args_hash({"to": "ana", "amount": 5}),
    signal="approval:c1",
    requested_at=1000.0,
    expires_at=2000.0,
)


def test_the_hash_is_canonical_and_tells_arguments_apart() -> None:
    assert args_hash('{"amount": 5, "to": "ana"}') == args_hash({"to": "ana", "amount": 5})
    assert args_hash({"to": "ana", "amount": 5}) != args_hash({"to": "ana", "amount": 50})
    assert args_hash({}).startswith("sha256:")


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({**approval_payload(REQUEST, True), "tool": "delete_all"}, "wrong_tool"),
        ({**approval_payload(REQUEST, True), "args_hash": args_hash({"amount": 6})}, "wrong_hash"),
        ({**approval_payload(REQUEST, True), "call_id": "c2"}, "wrong_call"),
        (True, "unbound"),
        ({"approved": True}, "unbound"),
        ("yes", "malformed"),
    ],
)
def test_a_payload_that_does_not_match_the_call_is_refused(payload: Any, reason: str) -> None:
    verdict = check_approval(REQUEST, payload, 1500.0)
    assert not verdict.accepted and verdict.reason == reason
    assert "c1" in verdict.error or "approval:c1" in verdict.error


def test_a_matching_payload_is_accepted_until_expiry_and_rejections_need_no_binding() -> None:
    good = approval_payload(REQUEST, True)
    assert check_approval(REQUEST, good, 1999.9).approved
    late = check_approval(REQUEST, good, 2000.0)
    assert not late.accepted and late.reason == "expired"
    no = check_approval(REQUEST, {"approved": False, "message": "not today"}, 1500.0)
    assert no.accepted and not no.approved and no.message == "not today"
    assert check_approval(REQUEST, True, 1500.0, allow_unbound=True).approved
    assert signal_time("1500000-0") == 1500.0


def test_pending_folds_the_journal_as_the_run_does() -> None:
    def done(seq: int, key: str, kind: str, name: str, value: Any) -> JournalEntry:
        entry = StepDone(
            key=key, kind=kind, name=name, fp="", result=encode_value(value), epoch=1,
            worker="w", at=0.0, duration=0.0,
        )  # fmt: skip
        return JournalEntry(seq, entry)

    request = done(1, "approval:c1", "approval", "refund", REQUEST.event())
    wrong = done(
        2, "signal:approval:c1", "signal", "approval:c1", {"sid": "1500000-0", "payload": True}
    )
    assert pending_approvals([request]) == [REQUEST]
    assert pending_approvals([request, wrong]) == [REQUEST]  # refused: still open
    good = {"sid": "1500000-1", "payload": approval_payload(REQUEST, True)}
    answered = done(3, "signal:approval:c1#2", "signal", "approval:c1", good)
    assert pending_approvals([request, wrong, answered]) == []
    assert pending_approvals([request], ended=True) == []
    with pytest.raises(Exception, match="ttl"):
        ApprovalPolicy(ttl=0)


# -- real runs -----------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_bound_approval_applies(
    client: Client, ap_workers: WorkerFactory, counters: aioredis.Redis
) -> None:
    a = await ap_workers("a")
    handle = await client.submit("refund", ORDER)
    [request] = await eventually(lambda: pending(handle), timeout=30)
    assert (request.call_id, request.tool, request.signal) == ("c1", "refund", "approval:c1")
    assert request.args_hash == args_hash(ORDER) and request.arguments == ORDER
    assert request.expires_at is None

    assert await handle.approve("c1", tool="refund", args_hash=request.args_hash) in (
        "stored",
        "woke",
    )
    assert await outcome(handle, a) == {"approved": True, "paid": "paid 5 to ana"}
    assert await execs(counters, handle.run_id, "step:pay") == 1
    [announced] = await events_of(handle, "approval.requested")
    assert (announced["tool"], announced["args_hash"], announced["expires_at"]) == (
        "refund", request.args_hash, None,
    )  # fmt: skip
    assert len(await events_of(handle, "approval.approved")) == 1
    assert await handle.pending_approvals() == []
    # Offline replay answers the request and the wait from the journal, lateness included.
    report = await handle.replay(approval_apps.app)
    assert report.matched, report


@pytest.mark.slow
async def test_mismatched_approvals_are_refused_and_the_run_keeps_waiting(
    client: Client, ap_workers: WorkerFactory, counters: aioredis.Redis
) -> None:
    a = await ap_workers("a")
    handle = await client.submit("refund", ORDER)
    [request] = await eventually(lambda: pending(handle), timeout=30)

    # The client helper refuses what it can tell is wrong, and sends nothing.
    for kwargs, reason in (
        ({"call_id": "c9"}, "unknown_call"),
        ({"call_id": "c1", "tool": "delete_all"}, "wrong_tool"),
        ({"call_id": "c1", "args_hash": args_hash({"to": "ana", "amount": 500})}, "wrong_hash"),
    ):
        with pytest.raises(ApprovalRefusedError) as info:
            await handle.approve(**kwargs)
        assert info.value.reason == reason
    assert await refusals(handle, 0) == []

    # Answers sent around the helper are refused by the run, which keeps waiting.
    good = approval_payload(request, True)
    for bad in (
        {**good, "tool": "delete_all"},
        {**good, "args_hash": args_hash({"to": "ana", "amount": 500})},
        {**good, "call_id": "c2"},
        True,
    ):
        await handle.signal("approval:c1", bad)
    reasons = await eventually(lambda: refusals(handle, 4), timeout=30)
    assert reasons == ["wrong_tool", "wrong_hash", "wrong_call", "unbound"]
    errors = [d["error"] for d in await events_of(handle, "approval.refused")]
    assert "RunHandle.approve('c1')" in errors[3]
    assert await handle.pending_approvals() == [request]
    assert not (await handle.status()).terminal
    assert await execs(counters, handle.run_id, "step:pay") == 0

    await handle.reject("c1", "not this month")
    assert await outcome(handle, a) == {
        "approved": False, "message": "not this month", "expired": False,
    }  # fmt: skip
    assert await execs(counters, handle.run_id, "step:pay") == 0


@pytest.mark.slow
async def test_a_bare_true_applies_only_when_the_policy_allows_unbound_approvals(
    client: Client, ap_workers: WorkerFactory
) -> None:
    a = await ap_workers("a")
    handle = await client.submit("refund", {**ORDER, "unbound": True})
    await handle.signal("approval:c1", True)
    assert (await outcome(handle, a))["approved"] is True


@pytest.mark.slow
async def test_expiry_rejects_the_call_and_a_late_answer_is_refused(
    client: Client, ap_workers: WorkerFactory, supervisor: Any, counters: aioredis.Redis
) -> None:
    a = await ap_workers("a")
    handle = await client.submit("refund", {**ORDER, "ttl": 3.0})
    [request] = await eventually(lambda: pending(handle), timeout=30)
    assert request.expires_at is not None
    assert request.expires_at == pytest.approx(request.requested_at + 3.0)
    a.kill()  # nobody notices the expiry while the run has no worker
    await asyncio.sleep(max(request.expires_at - time.time(), 0) + 0.2)  # wait out the clock

    with pytest.raises(ApprovalRefusedError) as info:
        await handle.approve("c1")
    assert info.value.reason == "expired"
    # Sent around the helper after expiry, then a worker resumes the run: refused as late.
    await handle.signal("approval:c1", approval_payload(request, True))
    b = await ap_workers("b")
    result = await outcome(handle, b)
    assert result["approved"] is False and result["expired"] is True
    assert "expired" in result["message"]
    assert await refusals(handle, 1) == ["expired"]
    assert len(await events_of(handle, "approval.expired")) == 1
    assert await execs(counters, handle.run_id, "step:pay") == 0


@pytest.mark.slow
async def test_expiry_can_fail_the_run(client: Client, ap_workers: WorkerFactory) -> None:
    a = await ap_workers("a")
    handle = await client.submit("refund", {**ORDER, "ttl": 1.0, "on_expiry": "fail"})
    with pytest.raises(RunFailed) as info:
        await outcome(handle, a)
    assert info.value.error_type == "WaitTimeout" and "expired" in info.value.message


@pytest.mark.slow
async def test_a_crash_after_the_approval_resumes_without_asking_again(
    client: Client, ap_workers: WorkerFactory, supervisor: Any, counters: aioredis.Redis
) -> None:
    a = await ap_workers("a")
    run_id = rid()
    await mark_gated(counters, run_id, "step:pay")  # hold the run in the approved action
    handle = await client.submit("refund", ORDER, run_id=run_id)
    await eventually(lambda: pending(handle), timeout=30)
    await handle.approve("c1")
    await eventually(lambda: _has(client, run_id, "signal:approval:c1"), timeout=30)
    a.kill()
    b = await ap_workers("b")
    await open_gate(counters, run_id, "step:pay")

    assert await outcome(handle, b) == {"approved": True, "paid": "paid 5 to ana"}
    assert await execs(counters, run_id, "step:pay") == 1
    steps = await done_steps(client, run_id)
    assert [k for k in steps if "approval" in k] == ["approval:c1", "signal:approval:c1"]
    assert len(await events_of(handle, "approval.requested")) == 1
    assert await refusals(handle, 0) == []


@pytest.mark.slow
async def test_changed_code_refuses_the_approval_given_for_the_old_call(
    client: Client, ap_workers: WorkerFactory, supervisor: Any, counters: aioredis.Redis
) -> None:
    a = await ap_workers("a")
    run_id = rid()
    await mark_gated(counters, run_id, "step:pay")
    handle = await client.submit("refund", ORDER, run_id=run_id)
    [old] = await eventually(lambda: pending(handle), timeout=30)
    await handle.approve("c1", args_hash=old.args_hash)
    await eventually(lambda: _has(client, run_id, "signal:approval:c1"), timeout=30)
    a.kill()  # approved and journaled; the payment has not happened

    # A deploy: the code now pays 500 for the same call.
    b = await ap_workers("b", REFUND_AMOUNT="500")
    reasons = await eventually(lambda: refusals(handle, 2), timeout=30)
    assert reasons == ["changed", "wrong_hash"]
    [new] = await eventually(lambda: pending(handle), timeout=30)
    assert new.args_hash == args_hash({"to": "ana", "amount": 500}) != old.args_hash
    assert new.arguments == {"to": "ana", "amount": 500}
    assert await execs(counters, run_id, "step:pay") == 0

    with pytest.raises(ApprovalRefusedError) as info:  # what the human saw is stale
        await handle.approve("c1", args_hash=old.args_hash)
    assert info.value.reason == "wrong_hash"
    await handle.approve("c1", args_hash=new.args_hash)
    await open_gate(counters, run_id, "step:pay")
    assert await outcome(handle, b) == {"approved": True, "paid": "paid 500 to ana"}
    assert await execs(counters, run_id, "step:pay") == 1


async def _has(client: Client, run_id: str, key: str) -> bool:
    return key in await done_steps(client, run_id)


@pytest.mark.slow
async def test_the_cli_lists_and_answers_pending_approvals(
    client: Client, ap_workers: WorkerFactory, cli: Any
) -> None:
    a = await ap_workers("a")
    handle = await client.submit("refund", ORDER)
    [request] = await eventually(lambda: pending(handle), timeout=30)
    listed = await cli("approve", handle.run_id)
    assert listed.code == 0, listed
    [shown] = [json.loads(line) for line in listed.out.splitlines()]
    # The CLI's JSON adds an ISO-8601 twin of Stalwart's own times (docs/configuration.md).
    assert shown.pop("requested_at_iso").startswith("20"), shown
    assert shown == request.event()

    stale = await cli("approve", handle.run_id, "c1", "--args-hash", "sha256:00")
    assert stale.code == 2 and "ApprovalRefusedError" in stale.err, stale
    answered = await cli("approve", handle.run_id, "c1", "--args-hash", request.args_hash)
    assert answered.code == 0 and answered.out.strip() in ("stored", "woke"), answered
    assert await outcome(handle, a) == {"approved": True, "paid": "paid 5 to ana"}
