"""Run ids, agent names and namespaces: what becomes a subject token or a key."""

from __future__ import annotations

import uuid

import pytest

from stalwart._ids import check_agent_name, check_namespace, check_run_id
from stalwart.errors import (
    ConfigurationError,
    InvalidRequestError,
)


@pytest.mark.parametrize(
    # A fixed id for the random one: parallel (xdist) processes must collect the same names.
    "rid",
    ["a", "run-1", "Run_2-x", "0" * 128, pytest.param(uuid.uuid4().hex, id="uuid4-hex")],
)
def test_check_run_id_accepts(rid: str) -> None:
    assert check_run_id(rid) == rid


@pytest.mark.parametrize("rid", ["", "a.b", "a b", " a", "x" * 129, "a/b", "a*", "a>", "é"])
def test_check_run_id_rejects(rid: str) -> None:
    with pytest.raises(InvalidRequestError, match="invalid run id"):
        check_run_id(rid)


def test_check_run_id_rejects_non_strings() -> None:
    with pytest.raises(InvalidRequestError):
        check_run_id(123)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["fast", "my_agent-2", "A" * 128])
def test_check_agent_name_accepts(name: str) -> None:
    assert check_agent_name(name) == name


@pytest.mark.parametrize("name", ["", "a.b", "a b", "x" * 129, "a>"])
def test_check_agent_name_rejects(name: str) -> None:
    with pytest.raises(ConfigurationError, match="invalid agent name"):
        check_agent_name(name)


def test_check_namespace() -> None:
    assert check_namespace("stalwart") == "stalwart"
    assert check_namespace("t" + "0" * 31) == "t" + "0" * 31
    with pytest.raises(ConfigurationError):
        check_namespace("t" + "0" * 32)
