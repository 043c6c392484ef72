"""Decode paths that build no type from a name: stored data stays inert data.

The adapter codecs that keep class names (CrewAI, OpenAI Agents, LangGraph) are tested with
their adapters. The core journal decoder and the codecs of PydanticAI and Strands only ever
build the types their callers declare; these tests pin that down with crafted data that an
unguarded decoder would turn into an import or a call.
"""

from __future__ import annotations

import sys
from typing import Any

import msgspec
import pytest

from stalwart.checkpoints import decode_value
from tests.adapters.tampering import MARKER_MODULE

_EXT_NAMING = msgspec.msgpack.Ext(1, msgspec.msgpack.encode(["os", "system", ["touch /x"]]))


def test_the_journal_decoder_leaves_extension_types_inert() -> None:
    loaded = set(sys.modules)
    raw = msgspec.msgpack.encode({"a": _EXT_NAMING, "b": [f"{MARKER_MODULE}:Evil"]})
    value = decode_value(raw)
    assert isinstance(value["a"], msgspec.msgpack.Ext)  # bytes, never a call
    assert value["b"] == [f"{MARKER_MODULE}:Evil"]
    with pytest.raises(msgspec.ValidationError):
        decode_value(raw, dict[str, int])  # a declared type is all a decoder builds
    assert set(sys.modules) - loaded == set()


def test_strands_journal_forms_name_no_types() -> None:
    pytest.importorskip("strands")
    from stalwart.adapters.strands._codec import load_stop, load_tool_result

    loaded = set(sys.modules)
    event = load_tool_result(
        {
            "result": {"toolUseId": "t", "status": "error", "content": []},
            "error": ["os.system", "x"],
        }
    )
    assert event.exception is not None and event.exception.error_type == "os.system"
    stop: Any = load_stop(
        {
            "stop_reason": "end_turn",
            "message": {"role": "assistant", "content": [{"__class__": "os.system"}]},
            "usage": {},
            "metrics": {},
        }
    )
    assert stop is not None
    assert set(sys.modules) - loaded == set()


def test_pydantic_ai_results_are_validated_as_their_declared_types() -> None:
    pytest.importorskip("pydantic_ai")
    from pydantic_ai.messages import ModelMessagesTypeAdapter

    loaded = set(sys.modules)
    crafted = [{"kind": "response", "parts": [{"part_kind": f"{MARKER_MODULE}:Evil"}]}]
    with pytest.raises(ValueError):  # pydantic's ValidationError: an unknown discriminator
        ModelMessagesTypeAdapter.validate_python(crafted)
    assert set(sys.modules) - loaded == set()
