"""The pure parts of the operations model and the CLI's output: cursors, placements, epochs,
tables, times, completion scripts. No servers."""

from __future__ import annotations

import datetime as dt
import re

import msgspec
import pytest

from stalwart._cli_completion import script
from stalwart._cli_output import ago, iso, parse_time, plain, span, table
from stalwart.checkpoints import JournalEntry, RunRecord, Started, StepDone, WaitStarted
from stalwart.cli import _parser
from stalwart.errors import InvalidRequestError
from stalwart.observability import build_history
from stalwart.operations._detail import epochs, waits
from stalwart.operations._index import decode_cursor, encode_cursor
from stalwart.operations._owners import placement_of


def test_cursor_round_trip_and_refusals() -> None:
    for position in [(1796309236.5819528, "abc-1"), (0.0, "x"), (1e9, "a|b")]:
        assert decode_cursor(encode_cursor(position)) == position
    for bad in ["", "!!!", "bm9waXBl", encode_cursor((1.0, "x"))[:-3] + "@@"]:
        with pytest.raises(InvalidRequestError, match="invalid cursor"):
            decode_cursor(bad)
    nan = encode_cursor((float("nan"), "x"))
    with pytest.raises(InvalidRequestError):
        decode_cursor(nan)


@pytest.mark.parametrize(
    ("status", "owner", "expected"),
    [
        ("completed", "", "ended"),
        ("running", "w1", "owned"),
        ("running", "", "awaiting_worker"),
        ("accepted", "", "queued"),
        ("waiting", "", "passivated"),
        ("waiting", "w2", "owned"),
    ],
)
def test_placement_from_record_and_lease(status: str, owner: str, expected: str) -> None:
    record = RunRecord(run_id="r", agent="a", status=status, worker="w0")  # type: ignore[arg-type]
    assert placement_of(record, owner) == expected


def _done(key: str, epoch: int, worker: str, at: float, duration: float = 1.0) -> StepDone:
    raw = msgspec.Raw(msgspec.msgpack.encode(1))
    return StepDone(
        key=key, kind="step", name=key, fp="", result=raw, epoch=epoch, worker=worker,
        at=at, duration=duration,
    )  # fmt: skip


def test_epochs_tell_failover_handover_wake_and_fork_apart() -> None:
    entries = [
        Started(epoch=0, worker="fork:src@step:a", at=100.0),
        Started(epoch=5, worker="a", at=101.0),
        _done("step:a", 5, "a", 102.0, 2.0),  # a's last activity ends at 104
        Started(epoch=9, worker="b", at=110.0, resumed=True),  # a died: 6 s without owner
        WaitStarted(key="wait:1", until=0.0, signal="go", epoch=9, worker="b", at=111.0),
        Started(epoch=12, worker="c", at=150.0, resumed=True),  # woken
        _done("wait:1", 12, "c", 150.5, 0.0),
        Started(epoch=14, worker="d", at=160.0, resumed=True),  # c drained (event says so)
    ]
    journal = [JournalEntry(seq=i + 1, entry=e) for i, e in enumerate(entries)]
    history = build_history("r", journal)
    views = epochs(history, journal, {12: "handover"})
    assert [(v.worker, v.cause) for v in views] == [
        ("fork:src@step:a", "fork"), ("a", "first"), ("b", "failover"), ("c", "wake"),
        ("d", "handover"),
    ]  # fmt: skip
    assert views[2].previous_worker == "a" and views[2].gap == pytest.approx(6.0)
    assert views[3].gap == pytest.approx(39.0)  # from b's wait to c's placement
    (w,) = waits(journal)
    assert (w.signal, w.started_at, w.resolved_at) == ("go", 111.0, 150.5)


def test_table_aligns_on_content_and_colours_only_when_asked() -> None:
    rows = [
        ["a-very-long-run-id", ("completed", "completed"), "3"],
        ["r2", ("failed", "failed"), "12"],
    ]
    out = table(["ID", "STATUS", "N"], rows, right=[2])
    assert "\x1b[" not in out
    lines = out.splitlines()
    assert {
        line.index(s) for line, s in zip(lines, ["STATUS", "completed", "failed"], strict=True)
    } == {20}
    assert [line[-2:] for line in lines] == [" N", " 3", "12"]  # right-aligned
    coloured = table(["ID", "STATUS", "N"], rows, right=[2], color=True)
    assert "\x1b[32mcompleted\x1b[0m" in coloured
    assert re.sub(r"\x1b\[[0-9;]*m", "", coloured) == out  # codes never shift a column


def test_times_for_people_and_for_json() -> None:
    assert [span(0.25), span(4.2), span(61), span(7300), span(90000)] == [
        "250ms", "4.2s", "1m01s", "2h01m", "1d01h",
    ]  # fmt: skip
    assert ago(100.0, now=130.0) == "30s ago" and ago(200.0, now=130.0) == "in 1m10s"
    assert ago(0.0) == "-"
    assert iso(0.0) == "" and iso(1796309236.5) == "2026-12-03T14:47:16.500Z"
    assert parse_time("10m", now=1000.0) == 400.0 and parse_time("1d", now=86400.0) == 0.0
    assert parse_time("2026-12-03T14:47:16.5Z") == 1796309236.5
    naive = dt.datetime(2026, 12, 3, 10, 0).timestamp()  # no offset: local time
    assert parse_time("2026-12-03T10:00:00") == naive
    for bad in ["", "yesterday", "10x", "-5m"]:
        with pytest.raises(InvalidRequestError, match="expected a time like"):
            parse_time(bad)
    data = plain({"created_at": 1796309236.5, "result": {"done_at": 5.0}, "ended_at": 0.0})
    assert data["created_at_iso"] == "2026-12-03T14:47:16.500Z"
    assert "ended_at_iso" not in data and data["result"] == {"done_at": 5.0}  # user data kept


def test_completion_scripts_know_every_subcommand() -> None:
    parser = _parser()
    bash = script(parser, "bash")
    for command in ("runs", "workers", "agents", "events", "completion", "status"):
        assert f"{command}) opts=" in bash
    assert "runs:-o|runs:--output) COMPREPLY=($(compgen -W 'table json jsonl'" in bash
    assert "--lease-ttl" not in bash.split("runs) opts=")[1].split("\n")[0]  # hidden there
    assert "--lease-ttl" in bash.split("worker) opts=")[1].split("\n")[0]
    assert script(parser, "zsh").startswith("#compdef stalwart\n")
    fish = script(parser, "fish")
    assert "__fish_seen_subcommand_from runs' -s o -l output -x -a 'table json jsonl'" in fish
