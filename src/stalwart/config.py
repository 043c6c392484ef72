"""Settings shared by workers, supervisors and clients, read from flags and the environment."""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any

import msgspec

from stalwart._ids import check_namespace
from stalwart.errors import ConfigurationError

ENV_PREFIX = "STALWART_"


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Runtime settings. Every field can be set by ``STALWART_<FIELD>`` in the environment.

    Durations are in seconds.
    """

    nats_url: str | None = None
    """NATS server URL (needs nats-server >= 2.11 with JetStream). None: embedded server."""
    redis_url: str | None = None
    """Redis URL for the journal. None: embedded server."""
    namespace: str = "stalwart"
    """Prefix of stream names, subjects and Redis keys; lets several deployments share servers."""
    lease_ttl: int = 5
    """Lease time-to-live. A dead worker's runs are resumed about this long after it died."""
    concurrency: int = 16
    """Runs one worker process hosts at once."""
    ack_wait: float = 30.0
    """How long JetStream waits for a worker to place a run request before redelivering it."""
    max_deliver: int = 20
    """Deliveries of one run request before it is given up on."""
    duplicate_window: float = 120.0
    """JetStream de-duplication window for run requests (by run id)."""
    event_max_age: float = 7 * 24 * 3600.0
    """How long run events are kept in the events stream."""
    reconcile_interval: float = 2.0
    """How often the supervisor scans for running runs that have no owner."""
    drain_timeout: float = 30.0
    """On SIGTERM, how long a worker waits for in-flight steps before giving its runs up."""
    passivate_after: float = 60.0
    """A durable wait longer than this gives up its worker slot and lease until woken."""
    stuck_after: float = 900.0
    """A running run whose journal has not moved for this long is reported stuck (0: never)."""
    stuck_action: str = "report"
    """``report`` (a ``run.stuck`` event) or ``replace`` (also revoke its lease: re-placed)."""
    breaker_threshold: int = 5
    """Consecutive failures of a model endpoint or tool that open its circuit breaker."""
    breaker_cooldown: float = 30.0
    """How long an open circuit fails fast before letting one trial call through."""
    worker_id: str = ""
    """Identity of this worker in leases and the journal; generated when empty."""
    # -- h4: unserved requests, stream limits, signal limits
    unserved_after: float = 300.0
    """A run request that no consumer serves (no worker ever served its agent) is rejected
    after waiting this long in the runs stream (0: never)."""
    runs_max_msgs: int = 1_000_000
    """Run requests the runs stream holds at most; when full, new requests are refused."""
    runs_max_bytes: int = -1
    """Bytes the runs stream holds at most (-1: no limit). JetStream reserves this much
    storage up front when the stream is created."""
    request_max_bytes: int = 1_048_576
    """Largest encoded run request the runs stream accepts (also capped by the server's
    max_payload)."""
    events_max_msgs: int = 10_000_000
    """Events the events stream keeps at most; the oldest are dropped first."""
    events_max_bytes: int = -1
    """Bytes the events stream keeps at most (-1: no limit; reserved up front like
    ``runs_max_bytes``); the oldest events are dropped first."""
    signal_max_bytes: int = 262_144
    """Largest encoded signal payload ``RunHandle.signal`` accepts."""
    signal_name_max: int = 1024
    """Longest signal name, in characters (``outcome:<step key>`` names of nested steps are long)."""
    signal_max_pending: int = 1000
    """Signals a run may hold unconsumed at once; more are refused until it consumes some."""
    cancel_reason_max: int = 1000
    """Longest reason ``RunHandle.cancel`` accepts, in characters."""

    def __post_init__(self) -> None:
        check_namespace(self.namespace)
        if self.lease_ttl < 1:
            # Nats-TTL is whole seconds: a sub-second lease cannot be expressed.
            raise ConfigurationError(f"lease_ttl must be >= 1 second, got {self.lease_ttl}")
        if self.stuck_action not in ("report", "replace"):
            raise ConfigurationError(
                f"stuck_action must be 'report' or 'replace', got {self.stuck_action!r}"
            )
        if self.concurrency < 1:
            raise ConfigurationError(f"concurrency must be >= 1, got {self.concurrency}")
        for name in (
            "signal_max_bytes",
            "signal_name_max",
            "signal_max_pending",
            "cancel_reason_max",
        ):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("runs_max_msgs", "runs_max_bytes", "events_max_msgs", "events_max_bytes"):
            value = getattr(self, name)
            if value == 0 or value < -1:  # JetStream: -1 is "no limit"
                raise ConfigurationError(f"{name} must be -1 (no limit) or >= 1, got {value}")
        if self.request_max_bytes < 1:
            raise ConfigurationError(
                f"request_max_bytes must be >= 1, got {self.request_max_bytes}"
            )
        if self.unserved_after < 0:
            raise ConfigurationError(f"unserved_after must be >= 0, got {self.unserved_after}")

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Build settings from ``STALWART_*`` variables; non-None ``overrides`` win."""
        values: dict[str, Any] = {}
        for field in msgspec.structs.fields(cls):
            raw = os.environ.get(ENV_PREFIX + field.name.upper())
            if raw is not None and raw != "":
                values[field.name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return msgspec.convert(values, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise ConfigurationError(f"bad Stalwart setting: {exc}") from exc

    def with_worker_id(self) -> Settings:
        """Return settings whose ``worker_id`` is set (host-pid-random when it was empty)."""
        if self.worker_id:
            return self
        wid = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        return msgspec.structs.replace(self, worker_id=wid)
