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
    drain_timeout: float = 20.0
    """On SIGTERM, how long a worker lets in-flight steps run before handing their runs over.

    Counted from the signal. Keep the orchestrator's grace period (Kubernetes'
    ``terminationGracePeriodSeconds``, 30 s by default) at least 10 s above it."""
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
    # -- h1: freezes, slow servers and graceful drain
    lease_margin: float = 0.0
    """Seconds of a lease's TTL a worker never counts on (0: half of ``lease_ttl``).

    User code (a step body, a tool or model call, a reconcile hook, the code after a durable
    wait) starts without asking the server only if the last confirmed renewal was sent less
    than ``lease_ttl - lease_margin`` ago; otherwise the worker renews that lease first."""
    lease_confirm_retry: float = 0.25
    """Pause between attempts to confirm a lease with an unreachable server (up to a TTL)."""

    @property
    def effective_lease_margin(self) -> float:
        """``lease_margin``, or its default (half the TTL) when it is 0."""
        return self.lease_margin or self.lease_ttl / 2

    def __post_init__(self) -> None:
        check_namespace(self.namespace)
        if self.lease_ttl < 1:
            # Nats-TTL is whole seconds: a sub-second lease cannot be expressed.
            raise ConfigurationError(f"lease_ttl must be >= 1 second, got {self.lease_ttl}")
        if self.stuck_action not in ("report", "replace"):
            raise ConfigurationError(
                f"stuck_action must be 'report' or 'replace', got {self.stuck_action!r}"
            )
        if not 0 <= self.lease_margin < self.lease_ttl:
            raise ConfigurationError(
                f"lease_margin must be >= 0 and below lease_ttl ({self.lease_ttl} s), "
                f"got {self.lease_margin}"
            )
        if self.drain_timeout < 0:
            raise ConfigurationError(f"drain_timeout must be >= 0, got {self.drain_timeout}")
        if self.lease_confirm_retry <= 0:
            raise ConfigurationError(
                f"lease_confirm_retry must be > 0, got {self.lease_confirm_retry}"
            )
        if self.concurrency < 1:
            raise ConfigurationError(f"concurrency must be >= 1, got {self.concurrency}")

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
