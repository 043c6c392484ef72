"""The committed AsyncAPI document is what the code generates, and it describes real traffic."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest

from stalwart.api import OPERATIONS, REPLIES, ApiError, ResultReply, StatusReply, SubmitRequest
from stalwart.broker import Names
from stalwart.contract import build_contract, render_contract
from stalwart.messages import EVENT_DATA, RunEvent, RunRequest, encode_event

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "docs" / "contract" / "asyncapi.json"


def test_the_committed_document_is_what_the_code_generates() -> None:
    assert COMMITTED.read_text() == render_contract(), (
        "docs/contract/asyncapi.json is out of date: run "
        "`python -m stalwart.contract -o docs/contract/asyncapi.json`"
    )


def test_the_command_writes_and_checks_the_document(tmp_path: Path) -> None:
    out = tmp_path / "c.json"
    cmd = [sys.executable, "-m", "stalwart.contract", "-o", str(out)]
    subprocess.run(cmd, check=True, timeout=60)
    assert out.read_text() == render_contract()
    assert subprocess.run([*cmd, "--check"], timeout=60).returncode == 0
    out.write_text("{}")
    stale = subprocess.run([*cmd, "--check"], timeout=60, capture_output=True, text=True)
    assert stale.returncode == 1 and "out of date" in stale.stderr


def _fill(address: str, **values: str) -> str:
    for name, value in values.items():
        address = address.replace("{" + name + "}", value)
    assert "{" not in address, address
    return address


def test_channel_addresses_are_the_subjects_stalwart_uses() -> None:
    doc = build_contract()
    ch = {name: c["address"] for name, c in doc["channels"].items()}
    n = Names("acme")
    values = {"namespace": "acme", "agent": "greet", "run_id": "r-1", "lane": "fast"}
    assert _fill(ch["runs"], **values) == n.runs_subject("greet")
    assert _fill(ch["runsLane"], **values) == n.runs_subject("greet", "fast")
    for source in ("sys", "client"):
        got = _fill(ch["events"], source=source, **values)
        assert got == n.events_subject("r-1", source, agent="greet")
    assert _fill(ch["signals"], **values) == n.signals_subject("r-1")
    assert _fill(ch["rejected"], **values) == n.rejected_subject("greet")
    for op in OPERATIONS:
        assert _fill(ch[f"api.{op}"], **values) == n.api_subject(op)
    assert ch["reply"] is None


def _validator(doc: dict[str, Any], name: str) -> jsonschema.Validator:
    schema = {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
    cls = jsonschema.validators.validator_for(
        {"$schema": "https://json-schema.org/draft/2020-12/schema"}
    )
    return cls(schema)  # type: ignore[no-any-return]


def test_real_messages_match_their_schemas_and_wrong_ones_do_not() -> None:
    doc = build_contract()
    event = json.loads(encode_event(RunEvent(type="run.started", run_id="r", at=1.0, agent="a")))
    _validator(doc, "RunEvent").validate(event)
    request = json.loads(msgspec.json.encode(RunRequest(run_id="r", agent="a", input={"x": 1})))
    _validator(doc, "RunRequest").validate(request)
    page = json.loads(msgspec.json.encode(ResultReply(run_id="r", status="completed", data=b"ab")))
    _validator(doc, "ResultReply").validate(page)
    _validator(doc, "StatusReply").validate(
        json.loads(msgspec.json.encode(StatusReply(run_id="r", agent="a", status="running")))
    )
    _validator(doc, "ApiError").validate({"code": "unknown_run", "message": "m"})
    with pytest.raises(jsonschema.ValidationError):
        _validator(doc, "ApiError").validate({"code": "nope", "message": "m"})
    with pytest.raises(jsonschema.ValidationError):
        _validator(doc, "SubmitRequest").validate({"input": 1})  # no agent
    with pytest.raises(jsonschema.ValidationError):
        _validator(doc, "RunRequest").validate({"run_id": "r", "agent": "a", "epoch": -1})
    # What the schema accepts the server decodes too.
    msgspec.json.decode(b'{"agent": "a", "input": [1]}', type=SubmitRequest)


def test_every_operation_message_and_event_data_is_described() -> None:
    doc = build_contract()
    schemas = doc["components"]["schemas"]
    for op, request in OPERATIONS.items():
        assert request.__name__ in schemas and REPLIES[op].__name__ in schemas
        reply = doc["operations"][f"api.{op}"]["reply"]["messages"]
        assert {r["$ref"].rsplit("/", 1)[-1] for r in reply} == {REPLIES[op].__name__, "ApiError"}
    assert ApiError.__name__ in schemas
    for kind, struct in EVENT_DATA.items():
        described = doc["x-stalwart-event-data"][kind]
        assert (described is None) == (struct is None)
        if struct is not None:
            assert struct.__name__ in schemas
    headers = doc["components"]["messages"]["ApiError"]["headers"]["properties"]
    assert set(headers["Stalwart-Error"]["enum"]) == set(doc["x-stalwart-error-codes"])
