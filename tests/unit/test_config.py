"""Settings: environment, overrides and the checks of each value."""

from __future__ import annotations

import pytest

from stalwart.config import Settings
from stalwart.errors import ConfigurationError


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    import os

    for key in list(os.environ):
        if key.startswith("STALWART_"):
            monkeypatch.delenv(key)
    return monkeypatch


def test_settings_from_env_reads_stalwart_variables(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("STALWART_NATS_URL", "nats://example:4223")
    clean_env.setenv("STALWART_REDIS_URL", "redis://example:6380/1")
    clean_env.setenv("STALWART_NAMESPACE", "prod_eu")
    clean_env.setenv("STALWART_LEASE_TTL", "7")
    clean_env.setenv("STALWART_CONCURRENCY", "3")
    clean_env.setenv("STALWART_ACK_WAIT", "12.5")
    clean_env.setenv("STALWART_WORKER_ID", "w-9")
    s = Settings.from_env()
    assert s.nats_url == "nats://example:4223"
    assert s.redis_url == "redis://example:6380/1"
    assert s.namespace == "prod_eu"
    assert s.lease_ttl == 7
    assert s.concurrency == 3
    assert s.ack_wait == 12.5
    assert s.worker_id == "w-9"


def test_settings_from_env_defaults_without_variables(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("STALWART_LEASE_TTL", "")  # empty counts as unset
    assert Settings.from_env() == Settings()


def test_settings_overrides_win_and_none_overrides_are_ignored(
    clean_env: pytest.MonkeyPatch,
) -> None:
    clean_env.setenv("STALWART_NAMESPACE", "fromenv")
    clean_env.setenv("STALWART_LEASE_TTL", "7")
    s = Settings.from_env(namespace="fromarg", lease_ttl=None, concurrency=2)
    assert s.namespace == "fromarg"
    assert s.lease_ttl == 7
    assert s.concurrency == 2


@pytest.mark.parametrize(
    ("var", "value"),
    [("STALWART_LEASE_TTL", "soon"), ("STALWART_CONCURRENCY", "many"), ("STALWART_ACK_WAIT", "x")],
)
def test_settings_bad_env_value_raises(clean_env: pytest.MonkeyPatch, var: str, value: str) -> None:
    clean_env.setenv(var, value)
    with pytest.raises(ConfigurationError, match=var.removeprefix("STALWART_").lower()):
        Settings.from_env()


@pytest.mark.parametrize("ttl", [0, -1])
def test_settings_lease_ttl_below_one_raises(clean_env: pytest.MonkeyPatch, ttl: int) -> None:
    with pytest.raises(ConfigurationError, match="lease_ttl"):
        Settings(lease_ttl=ttl)
    with pytest.raises(ConfigurationError, match="lease_ttl"):
        Settings.from_env(lease_ttl=ttl)
    clean_env.setenv("STALWART_LEASE_TTL", str(ttl))
    with pytest.raises(ConfigurationError, match="lease_ttl"):
        Settings.from_env()


def test_settings_concurrency_below_one_raises() -> None:
    with pytest.raises(ConfigurationError, match="concurrency"):
        Settings(concurrency=0)


@pytest.mark.parametrize("ns", ["", "Prod", "1abc", "a.b", "a-b", "x" * 33])
def test_settings_invalid_namespace_raises(clean_env: pytest.MonkeyPatch, ns: str) -> None:
    with pytest.raises(ConfigurationError, match="namespace"):
        Settings(namespace=ns)
    with pytest.raises(ConfigurationError, match="namespace"):
        Settings.from_env(namespace=ns)


def test_settings_with_worker_id() -> None:
    generated = Settings().with_worker_id()
    assert generated.worker_id
    assert Settings().with_worker_id().worker_id != generated.worker_id
    fixed = Settings(worker_id="w1")
    assert fixed.with_worker_id() is fixed


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("runs_max_msgs", 0),
        ("runs_max_bytes", -2),
        ("events_max_msgs", 0),
        ("events_max_bytes", 0),
        ("request_max_bytes", 0),
        ("unserved_after", -1),
        ("signal_max_bytes", 0),
        ("signal_name_max", 0),
        ("signal_max_pending", 0),
        ("cancel_reason_max", 0),
    ],
)
def test_limit_settings_are_checked(field: str, value: int) -> None:
    with pytest.raises(ConfigurationError, match=field):
        Settings(**{field: value})
    with pytest.raises(ConfigurationError, match=field):
        Settings.from_env(**{field: str(value)})
