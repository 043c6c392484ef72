"""The supervisor's pure decision about one run (``judge``)."""

from __future__ import annotations

import msgspec
import pytest

from stalwart.checkpoints import RunRecord
from stalwart.supervisor import Verdict, judge


def _record(status: str, epoch: int = 3) -> RunRecord:
    return RunRecord(run_id="r1", agent="a", status=status, epoch=epoch)  # type: ignore[arg-type]


def test_judge_forgets_unknown_runs() -> None:
    assert judge(None, None) == Verdict("forget")
    assert judge(None, "w1").action == "forget"


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled"])
def test_judge_forgets_terminal_runs(status: str) -> None:
    assert judge(_record(status), None).action == "forget"
    assert judge(_record(status), "w1").action == "forget"


def test_judge_replaces_running_run_without_lease_holder() -> None:
    assert judge(_record("running", epoch=7), None) == Verdict("replace", 7)


def test_judge_leaves_running_run_with_holder_alone() -> None:
    assert judge(_record("running", epoch=7), "w1").action == "none"


def test_judge_leaves_accepted_runs_to_jetstream() -> None:
    assert judge(_record("accepted", epoch=0), None).action == "none"
    assert judge(_record("accepted", epoch=0), "w1").action == "none"


def test_judge_flags_stuck_runs() -> None:
    rec = RunRecord(run_id="r", agent="a", status="running", epoch=3, updated_at=100.0)
    assert judge(rec, "w1", now=150.0, stuck_after=60.0).action == "none"
    assert judge(rec, "w1", now=200.0, stuck_after=60.0).action == "stuck"
    assert judge(rec, None, now=200.0, stuck_after=60.0).action == "replace"
    waiting = msgspec.structs.replace(rec, status="waiting")
    assert judge(waiting, None).action == "none"


def test_judge_requeues_accepted_runs_after_the_bound() -> None:
    rec = msgspec.structs.replace(_record("accepted", epoch=0), created_at=100.0)
    assert judge(rec, None, now=105.0, requeue_after=10.0).action == "none"
    assert judge(rec, None, now=111.0, requeue_after=10.0) == Verdict("requeue", 0)
    assert judge(rec, None, now=10_000.0).action == "none"  # 0: never
    # Only accepted runs: a running or waiting run's request is not the one that got lost.
    for status in ("running", "waiting"):
        other = msgspec.structs.replace(_record(status, epoch=3), created_at=100.0)
        assert judge(other, "w1", now=111.0, requeue_after=10.0).action == "none"


def test_judge_rewakes_waiting_runs_long_past_their_timer() -> None:
    rec = msgspec.structs.replace(_record("waiting", epoch=4), wake_at=100.0)
    assert judge(rec, None, now=105.0, requeue_after=10.0).action == "none"
    assert judge(rec, None, now=111.0, requeue_after=10.0) == Verdict("rewake", 4)
    assert judge(rec, None, now=10_000.0).action == "none"  # 0: never
    no_timer = _record("waiting", epoch=4)  # waits for a signal only
    assert judge(no_timer, None, now=10_000.0, requeue_after=10.0).action == "none"
