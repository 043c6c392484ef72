"""The broker's pure parts: the server version check and the names of subjects, streams, buckets."""

from __future__ import annotations

import pytest

from stalwart.broker import Names, check_server_version
from stalwart.broker._names import agent_token
from stalwart.errors import (
    ConfigurationError,
    ServerVersionError,
)


def test_check_server_version_refuses_2_9() -> None:
    with pytest.raises(ServerVersionError) as info:
        check_server_version("2.9.10", "nats://h:4222")
    msg = str(info.value)
    assert "2.9.10" in msg
    assert "2.11" in msg
    assert "TTL" in msg
    assert "nats://h:4222" in msg
    assert isinstance(info.value, ConfigurationError)


@pytest.mark.parametrize("version", ["2.10.22", "v2.10.0", "1.4.1", "2.9"])
def test_check_server_version_refuses_older(version: str) -> None:
    with pytest.raises(ServerVersionError, match=r"2\.11"):
        check_server_version(version)


@pytest.mark.parametrize("version", ["2.11.0", "2.15.1", "v2.12.3-beta", "2.11", "3.0.0"])
def test_check_server_version_accepts(version: str) -> None:
    assert check_server_version(version) is None


def test_check_server_version_unparseable() -> None:
    with pytest.raises(ServerVersionError, match="cannot parse"):
        check_server_version("banana")


def test_names_with_custom_namespace() -> None:
    n = Names("acme_prod")
    assert n.runs_stream == "ACME_PROD_RUNS"
    assert n.events_stream == "ACME_PROD_EVENTS"
    assert n.lease_bucket == "ACME_PROD_LEASES"
    assert n.workers_bucket == "ACME_PROD_WORKERS"
    assert n.agents_bucket == "ACME_PROD_AGENTS"
    assert n.lease_stream == "KV_ACME_PROD_LEASES"
    assert n.workers_stream == "KV_ACME_PROD_WORKERS"
    assert n.runs_subject("research") == "acme_prod.runs.research"
    assert n.runs_wildcard == "acme_prod.runs.>"
    assert n.events_subject("r1", agent="research") == "acme_prod.events.research.r1.sys"
    assert n.events_subject("r1", "client", agent="a") == "acme_prod.events.a.r1.client"
    assert n.run_events("r1") == "acme_prod.events.*.r1.*"
    assert n.legacy_run_events("r1") == "acme_prod.events.r1.*"
    assert n.agent_events("research") == "acme_prod.events.research.*.*"
    assert n.events_from("client") == "acme_prod.events.*.*.client"
    assert n.events_wildcard == "acme_prod.events.>"
    assert n.rejected_subject("research") == "acme_prod.rejected.research"
    assert n.rejected_wildcard == "acme_prod.rejected.>"
    assert n.consumer("research") == "agent_research"
    assert n.lease_key("r1") == "run.r1"
    assert n.lease_subject("r1") == "$KV.ACME_PROD_LEASES.run.r1"
    assert n.worker_subject("w-1") == "$KV.ACME_PROD_WORKERS.w-1"


def test_names_default_namespace_differs() -> None:
    assert Names().runs_stream == "STALWART_RUNS"
    assert Names().events_subject("r", agent="a") != Names("other").events_subject("r", agent="a")


def test_agent_token_never_widens_or_splits_an_events_subject() -> None:
    n = Names("acme")
    for bad in ("", "a.b", "*", ">", "a b", "x" * 129, "~"):
        assert n.events_subject("r1", agent=bad) == "acme.events.~.r1.sys", bad
        assert n.agent_events(bad) == "acme.events.~.*.*", bad
    assert agent_token("Research_2-b") == "Research_2-b"
