"""What readers take from an event's subject and message metadata rather than its body:
the agent, the stream sequence, the run (``read_event``), in both subject layouts."""

from __future__ import annotations

import json

from stalwart._journal_events import entry_event
from stalwart.broker import Names
from stalwart.checkpoints import Finished, JournalEntry
from stalwart.messages import (
    NO_AGENT_TOKEN,
    RunEvent,
    encode_event,
    read_event,
    split_events_subject,
)

N = Names("acme")


def _body(**fields: object) -> bytes:
    return json.dumps({"type": "run.started", "run_id": "r1", "at": 1.0, **fields}).encode()


def test_seq_comes_from_the_reader_never_the_body() -> None:
    event = read_event(_body(seq=999), N.events_subject("r1", agent="a"), 42)
    assert event is not None and event.seq == 42
    unread = read_event(_body(seq=999), N.events_subject("r1", agent="a"))
    assert unread is not None and unread.seq == 0


def test_agent_comes_from_the_subject() -> None:
    forged = read_event(_body(agent="other"), N.events_subject("r1", agent="a"), 1)
    assert forged is not None and forged.agent == "a"
    unknown = read_event(_body(agent="bad name"), N.events_subject("r1", agent="bad name"), 1)
    assert unknown is not None and unknown.agent == ""
    assert N.events_subject("r1", agent="bad name").split(".")[2] == NO_AGENT_TOKEN


def test_an_event_of_another_run_on_a_runs_subject_is_skipped() -> None:
    assert read_event(_body(run_id="r2"), N.events_subject("r1", agent="a"), 1) is None
    assert read_event(_body(run_id="r2"), "acme.events.r1.sys", 1) is None


def test_events_stored_before_the_agent_token_are_read() -> None:
    old = read_event(_body(), "acme.events.r1.sys", 7)
    assert old is not None and (old.run_id, old.agent, old.seq) == ("r1", "", 7)
    forged = json.dumps({"type": "run.completed", "run_id": "r1", "at": 1.0}).encode()
    assert read_event(forged, "acme.events.r1.client", 8) is None
    assert read_event(forged, N.events_subject("r1", "client", agent="a"), 8) is None
    assert read_event(forged, N.events_subject("r1", "sys", agent="a"), 8) is not None


def test_split_events_subject() -> None:
    assert split_events_subject("acme.events.a.r1.sys") == ("a", "r1", "sys")
    assert split_events_subject("acme.events.r1.client") == ("", "r1", "client")
    assert split_events_subject("acme.rejected.a") is None
    assert split_events_subject("acme.events.a.r1.sys.x") is None


def test_publishers_put_the_agent_in_the_body_and_readers_get_it_back() -> None:
    je = JournalEntry(seq=3, entry=Finished(status="completed", at=2.0, worker="w", epoch=1))
    event = entry_event("r1", je, agent="research")
    assert event.agent == "research"
    subject = N.events_subject("r1", agent=event.agent)
    back = read_event(encode_event(event), subject, 5)
    assert back == RunEvent(**{**_fields(event), "seq": 5})


def _fields(event: RunEvent) -> dict[str, object]:
    return {f: getattr(event, f) for f in event.__struct_fields__}
