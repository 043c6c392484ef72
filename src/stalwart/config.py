"""Settings shared by workers, supervisors and clients, read from flags and the environment."""

from __future__ import annotations

import difflib
import math
import os
import socket
import tomllib
import uuid
from pathlib import Path
from typing import Any, Literal

import msgspec
import structlog

from stalwart._ids import check_namespace, parse_lanes
from stalwart.builds._ids import check_build
from stalwart.errors import ConfigurationError

ENV_PREFIX = "STALWART_"

Role = Literal["client", "worker", "supervisor"]
"""Who reads a setting: client commands, workers, supervisors."""

_ALL: frozenset[Role] = frozenset({"client", "worker", "supervisor"})
_WORKER: frozenset[Role] = frozenset({"worker"})
_SUPERVISOR: frozenset[Role] = frozenset({"supervisor"})
_SERVICES: frozenset[Role] = frozenset({"worker", "supervisor"})

FIELD_ROLES: dict[str, frozenset[Role]] = {
    "nats_url": _ALL,
    "redis_url": _ALL,
    # Transport security: every process connects to both servers.
    "nats_tls_ca": _ALL,
    "nats_tls_cert": _ALL,
    "nats_tls_key": _ALL,
    "nats_nkey_seed": _ALL,
    "nats_creds": _ALL,
    "redis_tls_ca": _ALL,
    "redis_tls_cert": _ALL,
    "redis_tls_key": _ALL,
    # Every process reads and writes the shared indexes: all must split them alike.
    "redis_index_shards": _ALL,
    "namespace": _ALL,
    "lease_ttl": _SERVICES,
    "concurrency": _WORKER,
    "ack_wait": _WORKER,
    "max_deliver": _WORKER,
    "pull_expires": _WORKER,
    "lanes": _WORKER,
    "build": _WORKER,
    # Any process may be the first of a namespace and create the streams with these.
    "duplicate_window": _ALL,
    "event_max_age": _ALL,
    # Any process may find the topology missing (docs/security.md#least-privilege-roles).
    "provision": _ALL,
    # Replicas and placement of every stream and bucket: whoever creates or checks them.
    "nats_replicas": _ALL,
    "nats_placement_cluster": _ALL,
    "nats_placement_tags": _ALL,
    "reconcile_interval": _SUPERVISOR,
    "liveness_interval": _SUPERVISOR,
    "drain_timeout": _WORKER,
    "passivate_after": _WORKER,
    "conversation_recheck": _WORKER,
    "stuck_after": _SUPERVISOR,
    "stuck_action": _SUPERVISOR,
    "breaker_threshold": _WORKER,
    "breaker_cooldown": _WORKER,
    "worker_id": _WORKER,
    "health_port": _SERVICES,
    "health_addr": _SERVICES,
    "health_timeout": _SERVICES,
    "connect_timeout": _ALL,
    # Every process writes runs' records (clients submit, workers journal, supervisors fail).
    "redis_wait_replicas": _ALL,
    "redis_wait_timeout": _ALL,
    "lease_margin": _WORKER,
    "lease_confirm_retry": _WORKER,
    # Clients refuse what workers would reject, so both read the nesting bound.
    "max_nesting": _ALL,
    "event_text_limit": _ALL,
    "max_placements": _WORKER,
    "unserved_after": _SUPERVISOR,
    "requeue_after": _SUPERVISOR,
    # Stream limits are applied by whichever process creates or updates the topology.
    "runs_max_msgs": _ALL,
    "runs_max_bytes": _ALL,
    "events_max_msgs": _ALL,
    "events_max_bytes": _ALL,
    "request_max_bytes": _ALL,
    # Limits checked by the sender (client) before anything is stored.
    "signal_max_bytes": _ALL,
    "signal_name_max": _ALL,
    "signal_max_pending": _ALL,
    "cancel_reason_max": _ALL,
    # -- payload encryption (docs/security.md#payload-encryption): whoever reads or writes payloads.
    "encryption_key": _ALL,
    "encryption_keys_file": _ALL,
    "encryption_codec": _ALL,
}
"""Which processes read each field. Settings a process does not read are not taken from its
environment, so a worker-only value can never break a client command. A field missing here
counts as read by all."""

OTHER_VARIABLES = frozenset(
    {
        "LOG_LEVEL",
        "LOG_FORMAT",
        "LOG_PAYLOADS",
        "TRACING",
        "METRICS_PORT",
        "METRICS_ADDR",
        "STATE_DIR",
        "NATS_SERVER",
        "REDIS_SERVER",
        "TEST_NATS_URL",
        "TEST_REDIS_URL",
        "CONFIG",
    }
)
"""``STALWART_*`` variables read outside :class:`Settings` (see docs/configuration.md)."""

_log = structlog.get_logger("stalwart.config")

_POSITIVE = "a number of seconds > 0"
_NON_NEGATIVE = "a number of seconds >= 0"
_STREAM_LIMIT = "-1 (no limit) or a whole number >= 1"


def _build_ok(v: str) -> bool:
    try:
        check_build(v)
    except ConfigurationError:
        return False
    return True


def _lanes_ok(v: str) -> bool:
    try:
        parse_lanes(v)
    except ConfigurationError:
        return False
    return True


def _stream_limit(v: int) -> bool:
    return v == -1 or v >= 1  # JetStream: -1 is "no limit", 0 is refused


_CHECKS: dict[str, tuple[Any, str]] = {
    "lease_ttl": (lambda v: v >= 1, "a whole number of seconds >= 1"),
    "concurrency": (lambda v: v >= 1, "a whole number >= 1"),
    "ack_wait": (lambda v: v > 0, _POSITIVE),
    "max_deliver": (lambda v: v >= 1, "a whole number >= 1"),
    "redis_index_shards": (lambda v: 0 <= v <= 1024, "a whole number from 0 to 1024"),
    "build": (
        _build_ok,
        "1-64 characters from A-Z a-z 0-9 _ - starting with a letter or digit (empty: derived from the app)",
    ),
    "lanes": (_lanes_ok, "comma-separated lane names (a-z 0-9 _ -; 'default': the default lane)"),
    "pull_expires": (
        lambda v: v == 0 or 1 <= v <= 300,
        "0 (half of lease_ttl) or a number of seconds from 1 to 300",
    ),
    "duplicate_window": (lambda v: v > 0, _POSITIVE),
    "event_max_age": (lambda v: v > 0, _POSITIVE),
    "reconcile_interval": (lambda v: v > 0, _POSITIVE),
    "liveness_interval": (
        lambda v: v == 0 or 0.01 <= v <= 60,
        "0 (off) or a number of seconds from 0.01 to 60",
    ),
    "drain_timeout": (lambda v: v >= 0, _NON_NEGATIVE),
    "passivate_after": (lambda v: v > 0, _POSITIVE),
    "conversation_recheck": (lambda v: v > 0, _POSITIVE),
    "stuck_after": (lambda v: v >= 0, _NON_NEGATIVE + " (0: never)"),
    "stuck_action": (lambda v: v in ("report", "replace"), "'report' or 'replace'"),
    "provision": (lambda v: v in ("auto", "off"), "'auto' or 'off'"),
    "nats_replicas": (lambda v: 1 <= v <= 5, "a whole number from 1 to 5 (JetStream's limit)"),
    "nats_placement_tags": (
        lambda v: all(t.strip() for t in v.split(",")) if v else True,
        "a comma-separated list of server tags without empty items (e.g. 'az:a,ssd')",
    ),
    "breaker_threshold": (lambda v: v >= 1, "a whole number >= 1"),
    "breaker_cooldown": (lambda v: v >= 0, _NON_NEGATIVE),
    "connect_timeout": (lambda v: v > 0, _POSITIVE),
    "health_port": (lambda v: 0 <= v <= 65535, "a port 0-65535 (0: off)"),
    "health_timeout": (lambda v: v > 0, _POSITIVE),
    "redis_wait_replicas": (lambda v: v >= 0, "a whole number >= 0 (0: off)"),
    "redis_wait_timeout": (lambda v: v >= 1, "a whole number of milliseconds >= 1"),
    "lease_margin": (lambda v: v >= 0, _NON_NEGATIVE + ", below lease_ttl (0: half of it)"),
    "lease_confirm_retry": (lambda v: v > 0, _POSITIVE),
    "max_nesting": (lambda v: v >= 1, "a whole number >= 1"),
    "event_text_limit": (lambda v: v >= 256, "a whole number of characters >= 256"),
    "max_placements": (lambda v: v >= 0, "a whole number >= 0 (0: no limit)"),
    "unserved_after": (lambda v: v >= 0, _NON_NEGATIVE + " (0: never)"),
    "requeue_after": (lambda v: v >= 0, _NON_NEGATIVE + " (0: never)"),
    "runs_max_msgs": (_stream_limit, _STREAM_LIMIT),
    "runs_max_bytes": (_stream_limit, _STREAM_LIMIT),
    "events_max_msgs": (_stream_limit, _STREAM_LIMIT),
    "events_max_bytes": (_stream_limit, _STREAM_LIMIT),
    "request_max_bytes": (lambda v: v >= 1, "a whole number of bytes >= 1"),
    "signal_max_bytes": (lambda v: v >= 1, "a whole number of bytes >= 1"),
    "signal_name_max": (lambda v: v >= 1, "a whole number of characters >= 1"),
    "signal_max_pending": (lambda v: v >= 1, "a whole number >= 1"),
    "cancel_reason_max": (lambda v: v >= 1, "a whole number of characters >= 1"),
}
"""Per field: the check a value must pass, and the accepted values said in words."""


def _describe(name: str) -> str:
    return f"{ENV_PREFIX}{name.upper()} ({name})"


def _accepted(name: str, type_: Any) -> str:
    if name in _CHECKS:
        return _CHECKS[name][1]
    return {int: "a whole number", float: "a number"}.get(type_, "a string")


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Runtime settings. Every field can be set by ``STALWART_<FIELD>`` in the environment,
    or by a key of the TOML config file (``STALWART_CONFIG``, see :meth:`from_env`).

    Durations are in seconds. The transport-security fields (``nats_tls_*``,
    ``nats_nkey_seed``, ``nats_creds``, ``redis_tls_*``) name files; see docs/security.md.
    """

    nats_url: str | None = None
    """NATS server URL (needs nats-server >= 2.11 with JetStream). None: embedded server."""
    redis_url: str | None = None
    """Redis URL for the journal. None: embedded server."""
    # -- transport security (docs/security.md): paths of PEM, nkey seed and .creds files
    nats_tls_ca: str = ""
    """CA certificate(s) that signed the NATS server's certificate; any ``nats_tls_*``
    turns TLS on and refuses a server that does not require it."""
    nats_tls_cert: str = ""
    """Client certificate for NATS mutual TLS (its key in ``nats_tls_key``, or in the file)."""
    nats_tls_key: str = ""
    """Private key of ``nats_tls_cert``."""
    nats_nkey_seed: str = ""
    """File holding a NATS user nkey seed (``SU...``): nkey authentication."""
    nats_creds: str = ""
    """NATS ``.creds`` file (user JWT and nkey seed, as nsc writes it): JWT authentication."""
    redis_tls_ca: str = ""
    """CA certificate(s) for a ``rediss://`` URL (the URL's ``ssl_ca_certs``)."""
    redis_tls_cert: str = ""
    """Client certificate for Redis mutual TLS (the URL's ``ssl_certfile``)."""
    redis_tls_key: str = ""
    """Private key of ``redis_tls_cert`` (the URL's ``ssl_keyfile``)."""
    redis_index_shards: int = 0
    """Keys each shared Redis index (runs, active runs, timers) is split into, with its own
    hash tag each, so no Redis Cluster master holds them all. 0: automatic, 1 (the keys
    ``<ns>:runs``, ``<ns>:active``, ``<ns>:timers``) on a single Redis, 16 on a cluster.
    Every process of a deployment must use the same value; changing it on a deployment with
    runs orphans their index entries (see docs/deployment.md)."""
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
    pull_expires: float = 0.0
    """How long a worker's pull request for run requests stays open on the server (0: half
    of ``lease_ttl``, at least 1 s).

    A worker asks only for the slots it has free, so an open request holds nothing back from
    other workers while the worker is alive. Longer requests cut idle traffic (per agent and
    worker: one request and its expiry per ``pull_expires``), but a frozen worker's open
    requests take run requests that then wait ``ack_wait``: below the lease TTL, they lapse
    before the worker's runs are resumed elsewhere."""

    lanes: str = "default"
    """Lanes this worker serves, comma-separated: ``default`` (runs submitted without a
    lane) and/or named lanes (``Client.submit(..., lane="hi")``). Each lane of each agent
    is its own consumer, so workers of one lane never take another lane's runs."""

    build: str = ""
    """This worker's build id (docs/deploys.md): runs it starts are resumed only by workers
    of a compatible build. Empty: derived from the app's code, so an unchanged deploy keeps
    its build."""

    @property
    def lane_list(self) -> list[str]:
        """:attr:`lanes` as lane names, "" for the default lane."""
        return parse_lanes(self.lanes)

    @property
    def effective_pull_expires(self) -> float:
        """``pull_expires``, or its default (half the lease TTL, at least 1 s) when it is 0."""
        return self.pull_expires or max(1.0, self.lease_ttl / 2)

    duplicate_window: float = 120.0
    """JetStream de-duplication window for run requests (by run id)."""
    event_max_age: float = 7 * 24 * 3600.0
    """How long run events are kept in the events stream."""
    provision: str = "auto"
    """``auto``: a process that finds a stream, KV bucket or consumer missing creates it
    (zero setup; the NATS user needs the right to). ``off``: it only looks them up, and a
    missing one is a ``ConfigurationError`` saying to run ``stalwart provision`` with admin
    rights (least-privilege deployments). Either way, what exists is never re-created."""
    # -- NATS cluster (docs/deployment.md#nats-cluster)
    nats_replicas: int = 1
    """Replicas of every stream and KV bucket Stalwart creates (1 to 5; at most the number of
    JetStream servers). 3 on a 3-node cluster survives the loss of any one node. An
    existing stream or bucket with fewer replicas (or another placement) is scaled up in
    place when ``provision`` is ``auto`` and refused with the fix to run when it is ``off``;
    one with more replicas than asked is kept as it is."""
    nats_placement_cluster: str = ""
    """Name of the NATS cluster (of a super-cluster) the streams and buckets are placed in;
    empty: wherever the server places them."""
    nats_placement_tags: str = ""
    """Comma-separated server tags (``server_tags`` in nats-server's config) every replica's
    server must have, e.g. ``region:eu``; empty: no constraint."""

    @property
    def placement_tags(self) -> list[str]:
        """``nats_placement_tags`` as a list (empty when unset)."""
        return [t.strip() for t in self.nats_placement_tags.split(",") if t.strip()]

    reconcile_interval: float = 2.0
    """How often the supervisor scans for running runs that have no owner."""
    liveness_interval: float = 0.1
    """How often the supervisor leader asks each worker that holds run leases whether its
    process is still connected (0: never; a dead worker's runs then wait for its leases to
    expire, up to ``lease_ttl``). A worker the NATS server twice reports has no connection
    ("no responders") has its leases revoked and its runs re-placed at once; one that is
    slow to answer is left to the lease TTL. Costs one tiny request per lease-holding
    worker per interval."""
    drain_timeout: float = 20.0
    """On SIGTERM, how long a worker lets in-flight steps run before handing their runs over.

    Counted from the signal. Keep the orchestrator's grace period (Kubernetes'
    ``terminationGracePeriodSeconds``, 30 s by default) at least 10 s above it."""
    passivate_after: float = 60.0
    """A durable wait longer than this gives up its worker slot and lease until woken."""
    conversation_recheck: float = 300.0
    """How often a run waiting for its conversation's turn looks again without being woken
    (a durable wait's timeout: it repairs a hand-off lost with a worker that died)."""
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
    # -- health endpoints for orchestrators' probes (src/stalwart/_health.py)
    health_port: int = 0
    """Port of the ``/livez`` and ``/readyz`` endpoints of ``stalwart worker`` and
    ``stalwart supervisor`` (0: off). ``/livez``: the event loop answers. ``/readyz``:
    started, not draining, NATS connected with JetStream answering, Redis answering PING."""
    health_addr: str = "0.0.0.0"
    """Address the health endpoints listen on. All interfaces by default, unlike metrics:
    the only callers are probes from outside the process (the kubelet dials the pod's IP),
    and the answers say no more than ready or not and which server is unreachable."""
    health_timeout: float = 2.0
    """How long each ``/readyz`` check (NATS, Redis) may take before it counts as failed.
    Keep the probe's own timeout (``timeoutSeconds``) above it."""
    # -- freezes, slow servers and graceful drain
    lease_margin: float = 0.0
    """Seconds of a lease's TTL a worker never counts on (0: half of ``lease_ttl``).

    User code (a step body, a tool or model call, a reconcile hook, the code after a durable
    wait) starts without asking the server only if the last confirmed renewal was sent less
    than ``lease_ttl - lease_margin`` ago; otherwise the worker renews that lease first."""
    lease_confirm_retry: float = 0.25
    """Pause between attempts to confirm a lease with a server that does not answer (kept up
    until it answers: only a refusal loses the lease)."""

    @property
    def effective_lease_margin(self) -> float:
        """``lease_margin``, or its default (half the TTL) when it is 0."""
        return self.lease_margin or self.lease_ttl / 2

    # -- connection bounds
    connect_timeout: float = 10.0
    """How long the first connection to NATS or to Redis may take before the process fails
    with ``ServerUnavailableError`` (refused connections are retried within it). An
    established connection is retried without limit."""
    redis_wait_replicas: int = 0
    """Replicas that must acknowledge each journal and record write of a run (Redis
    ``WAIT``, once per batch of pipelined writes) before a step counts as durable; fewer
    within ``redis_wait_timeout`` and the write is retried, not acknowledged. 0: off (a
    failover can lose the last writes; the journal's continuity check then re-places the
    run, see docs/deployment.md)."""
    redis_wait_timeout: int = 100
    """Milliseconds each ``WAIT`` waits for ``redis_wait_replicas`` acknowledgements."""
    # -- bounds on run requests, run events and placements
    max_nesting: int = 100
    """Deepest nesting of lists/dicts accepted in a run input or signal payload."""
    event_text_limit: int = 4096
    """Longest string (characters) in a published run event; longer ones are cut."""
    max_placements: int = 20
    """Placements in a row without journal progress before a run is failed (0: no limit)."""
    # -- unserved requests, stream limits, signal limits
    unserved_after: float = 300.0
    """A run request that no consumer serves (no worker ever served its agent) is rejected
    after waiting this long in the runs stream (0: never)."""
    requeue_after: float = 10.0
    """An ``accepted`` run older than this whose request is surely gone from the runs stream
    (the stream is younger than the run, or holds nothing for its agent: a new NATS, a
    recreated or purged stream, a submitter that died before publishing) has its request
    published again by the supervisor; so is the timer wake-up of a ``waiting`` run still
    waiting this long after its timer fired (0: never). A duplicate is harmless: a request
    for a run that is placed already is dropped."""
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
    cancel_reason_max: int = 65_536
    """Longest reason ``RunHandle.cancel`` accepts, in characters."""
    # -- payload encryption (one block; see docs/security.md#payload-encryption)
    encryption_key: str = ""
    """One AES-256 key for payload encryption: ``<key id>:<base64 of 32 bytes>`` (or just
    the base64, key id ``default``). Empty (and no keys file): payloads are not encrypted.
    A secret: set it from a secret store, never on a command line."""
    encryption_keys_file: str = ""
    """Path of a keyring file (JSON, or TOML by its ``.toml`` suffix):
    ``{"current": "k2", "keys": {"k1": "<base64>", "k2": "<base64>"}}``. New payloads use
    ``current``; old runs are read with the key their payloads name. Not with
    ``encryption_key``."""
    encryption_codec: str = ""
    """A payload codec of your own (a KMS): ``package.module:factory``, a callable taking no
    arguments that returns a ``PayloadCodec``. Instead of the two settings above; lets the
    ``stalwart`` command and workers use it without code of yours calling
    ``set_payload_codec``."""

    def __repr__(self) -> str:
        # The key must not reach a log line or a traceback through a repr of the settings.
        fields = ", ".join(
            f"{name}={'<hidden>' if name == 'encryption_key' and value else repr(value)}"
            for name, value in msgspec.structs.asdict(self).items()
        )
        return f"Settings({fields})"

    def __post_init__(self) -> None:
        check_namespace(self.namespace)
        for name, (check, accepted) in _CHECKS.items():
            value = getattr(self, name)
            # NaN passes no comparison; infinity would make every deadline meaningless.
            bad_float = isinstance(value, float) and not math.isfinite(value)
            if bad_float or not check(value):
                raise ConfigurationError(f"{_describe(name)} must be {accepted}, got {value!r}")
        if self.lease_margin >= self.lease_ttl:
            raise ConfigurationError(
                f"{_describe('lease_margin')} must be below lease_ttl ({self.lease_ttl} s), "
                f"got {self.lease_margin!r}"
            )

    @classmethod
    def from_env(
        cls, *, role: Role | None = None, config: str | None = None, **overrides: Any
    ) -> Settings:
        """Build settings from ``STALWART_*`` variables; non-None ``overrides`` win.

        ``config`` (else ``STALWART_CONFIG``) names a TOML file whose keys are the field
        names (see :func:`load_config_file`); the environment overrides it, and ``overrides``
        (command-line flags) override both.

        With ``role``, variables of fields that role does not read are ignored (a client
        command must not fail on a worker-only setting). A value that does not convert
        raises :class:`ConfigurationError` naming the variable and the accepted values; an
        unknown ``STALWART_*`` variable that looks like a misspelt one is logged as a warning.
        """
        path = config or os.environ.get(ENV_PREFIX + "CONFIG", "").strip()
        values: dict[str, Any] = load_config_file(path, role=role) if path else {}
        for field in msgspec.structs.fields(cls):
            if role is not None and role not in FIELD_ROLES.get(field.name, _ALL):
                continue
            raw = os.environ.get(ENV_PREFIX + field.name.upper())
            if raw is not None and raw.strip() != "":
                values[field.name] = _convert(field.name, field.type, raw.strip())
        values.update({k: v for k, v in overrides.items() if v is not None})
        warn_unknown_variables()
        try:
            return msgspec.convert(values, cls, strict=False)
        except msgspec.ValidationError as exc:
            # "Expected `int`, got `float` - at `$.lease_ttl`": name the setting instead.
            name = str(exc).rpartition("$.")[2].rstrip("`")
            if name in cls.__struct_fields__:
                raise ConfigurationError(
                    f"{_describe(name)} must be {_accepted(name, None)}, got {values.get(name)!r}"
                ) from None
            raise ConfigurationError(f"bad Stalwart setting: {exc}") from None

    def with_worker_id(self) -> Settings:
        """Return settings whose ``worker_id`` is set (host-pid-random when it was empty)."""
        if self.worker_id:
            return self
        wid = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        return msgspec.structs.replace(self, worker_id=wid)


PATH_FIELDS = frozenset(
    {
        "nats_tls_ca",
        "nats_tls_cert",
        "nats_tls_key",
        "nats_nkey_seed",
        "nats_creds",
        "redis_tls_ca",
        "redis_tls_cert",
        "redis_tls_key",
        "encryption_keys_file",
    }
)
"""Settings that name files: relative paths in a config file are relative to that file."""


def load_config_file(path: str, *, role: Role | None = None) -> dict[str, Any]:
    """The settings in TOML file ``path``: top-level keys named like the fields.

    ``nats_url = "tls://nats:4222"``, ``lease_ttl = 5``, ``nats_tls_ca = "certs/ca.pem"``
    (relative file paths are taken relative to the file). With ``role``, keys of fields the
    role does not read are left out, as for the environment. An unknown key (a typo) or a
    table is a :class:`ConfigurationError`: a setting that silently does nothing would be
    worse in a file meant for security settings.
    """
    shown = f"config file {path!r} ({ENV_PREFIX}CONFIG / --config)"
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigurationError(f"cannot read {shown}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{shown} is not valid TOML: {exc}") from None
    fields = Settings.__struct_fields__
    base = Path(path).resolve().parent
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1, cutoff=0.8)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigurationError(f"{shown}: unknown setting {key!r}{hint}")
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ConfigurationError(
                f"{shown}: {key} must be a string or a number, got {type(value).__name__}"
            )
        if role is not None and role not in FIELD_ROLES.get(key, _ALL):
            continue
        if key in PATH_FIELDS and isinstance(value, str) and value:
            value = str(base / Path(value).expanduser())  # an absolute path stays as it is
        values[key] = value
    return values


def _convert(name: str, type_: Any, raw: str) -> Any:
    """``raw`` (text from the environment) as the field's type, or a ConfigurationError."""
    if type_ not in (int, float):
        return raw
    try:
        return int(raw) if type_ is int else float(raw)
    except ValueError:
        raise ConfigurationError(
            f"{_describe(name)}={raw!r}: expected {_accepted(name, type_)}"
        ) from None


def warn_unknown_variables() -> list[str]:
    """Warn about ``STALWART_*`` variables that look like misspellings of known ones.

    Returns the warnings. Variables that resemble no known one are left alone (they may be
    the user's own).
    """
    # Every field, also those without an entry in FIELD_ROLES.
    known = {f.upper() for f in Settings.__struct_fields__} | OTHER_VARIABLES
    warnings = []
    for var in sorted(os.environ):
        if not var.startswith(ENV_PREFIX) or var[len(ENV_PREFIX) :] in known:
            continue
        close = difflib.get_close_matches(var[len(ENV_PREFIX) :], known, n=1, cutoff=0.8)
        if close:
            warnings.append(
                f"{var} is not a Stalwart setting; did you mean {ENV_PREFIX}{close[0]}?"
            )
            _log.warning(
                "settings.unknown_variable", variable=var, suggestion=ENV_PREFIX + close[0]
            )
    return warnings
