"""OpenTelemetry metrics, served to Prometheus by the worker and the supervisor.

The instruments are created once, on the global meter: until a ``MeterProvider`` is installed
they are OpenTelemetry's no-op proxies, so recording costs next to nothing. The ``stalwart``
command installs one with a Prometheus reader when ``--metrics-port`` /
``STALWART_METRICS_PORT`` is set (:func:`configure_metrics`); an application that embeds a
worker can install its own provider instead, and the same instruments report there.

Gauges ask the workers and supervisors of this process for a snapshot (a plain record) when
scraped: each registers a function that returns one, or None once it is gone.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from stalwart._version import __version__
from stalwart.errors import ConfigurationError
from stalwart.telemetry._tracing import service_resource

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from opentelemetry.sdk.metrics import MeterProvider

    from stalwart.telemetry._records import (
        ReconcilePass,
        RunSeen,
        SupervisorSnapshot,
        WorkerSnapshot,
    )

METRICS_PORT_ENV = "STALWART_METRICS_PORT"
METRICS_ADDR_ENV = "STALWART_METRICS_ADDR"

# Seconds: from a fast Redis append (~0.1 ms) to a slow model call (minutes).
_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}

_meter = metrics.get_meter("stalwart", __version__)

runs_started = _meter.create_counter(
    "stalwart.runs.started",
    unit="{run}",
    description="Placements of runs on a worker, by agent; resumed=true after a failover, drain or wake",
)
runs_completed = _meter.create_counter(
    "stalwart.runs.completed", unit="{run}", description="Runs that completed, by agent"
)
runs_failed = _meter.create_counter(
    "stalwart.runs.failed", unit="{run}", description="Runs that failed, by agent and error type"
)
runs_cancelled = _meter.create_counter(
    "stalwart.runs.cancelled", unit="{run}", description="Runs that were cancelled, by agent"
)
passivations = _meter.create_counter(
    "stalwart.runs.passivations",
    unit="{run}",
    description="Runs that gave up their worker slot to wait durably, by agent",
)
step_duration = _meter.create_histogram(
    "stalwart.step.duration",
    unit="s",
    description="Duration of live steps (last attempt), by kind and outcome",
    explicit_bucket_boundaries_advisory=_LATENCY_BUCKETS,
)
step_retries = _meter.create_counter(
    "stalwart.step.retries", unit="{retry}", description="Failed step attempts that were retried"
)
steps_replayed = _meter.create_counter(
    "stalwart.steps.replayed",
    unit="{step}",
    description="Steps answered from the journal instead of running again, by agent",
)
model_tokens = _meter.create_counter(
    "stalwart.model.tokens",
    unit="{token}",
    description="Tokens reported by live model steps, by model and type (input/output)",
)
failovers = _meter.create_counter(
    "stalwart.failovers",
    unit="{run}",
    description="Runs re-placed by the supervisor because their owner lost its lease",
)
lease_renew_duration = _meter.create_histogram(
    "stalwart.lease.renew.duration",
    unit="s",
    description="Duration of one batched renewal of a worker's leases",
    explicit_bucket_boundaries_advisory=_LATENCY_BUCKETS,
)
journal_append_duration = _meter.create_histogram(
    "stalwart.journal.append.duration",
    unit="s",
    description="Duration of one fenced journal append",
    explicit_bucket_boundaries_advisory=_LATENCY_BUCKETS,
)

# -- gauges over snapshots ------------------------------------------------------------------------

_workers: dict[str, Callable[[], WorkerSnapshot | None]] = {}
_supervisors: dict[str, Callable[[], SupervisorSnapshot | None]] = {}
"""The snapshot sources of this process's workers and supervisors, by id."""
_breaker_names: set[str] = set()
"""Breakers this process has used (``kind:name``), so closed ones report 0 instead of vanishing."""
_run_status: dict[str, dict[str, str]] = {}
"""By supervisor id: the status of each active run as of its last reconcile pass."""


def watch_worker(source: Callable[[], WorkerSnapshot | None]) -> None:
    """Report a worker in the gauges: ``source`` describes it, or returns None once it is gone."""
    snapshot = source()
    if snapshot is not None:
        _workers[snapshot.worker_id] = source


def watch_supervisor(source: Callable[[], SupervisorSnapshot | None]) -> None:
    """Report a supervisor in the gauges, as :func:`watch_worker` does a worker."""
    snapshot = source()
    if snapshot is not None:
        _supervisors[snapshot.supervisor_id] = source
        _run_status.setdefault(snapshot.supervisor_id, {})


def breaker_used(name: str) -> None:
    """Remember that breaker ``name`` exists in this process."""
    _breaker_names.add(name)


def active_set(event: ReconcilePass) -> None:
    """A reconcile pass starts: forget runs that have left the active set."""
    seen = _run_status.setdefault(event.supervisor_id, {})
    keep = set(event.run_ids)
    for run_id in [r for r in seen if r not in keep]:
        del seen[run_id]


def run_status(event: RunSeen) -> None:
    """A supervisor read a run's record."""
    seen = _run_status.setdefault(event.supervisor_id, {})
    if event.status is None:
        seen.pop(event.run_id, None)
    else:
        seen[event.run_id] = event.status


def _worker_snapshots() -> list[WorkerSnapshot]:
    # Called from the exporter's thread: iterate over a copy, drop the ones that are gone.
    out = []
    for worker_id, source in list(_workers.items()):
        snapshot = source()
        if snapshot is None:
            _workers.pop(worker_id, None)
        else:
            out.append(snapshot)
    return out


def _supervisor_snapshots() -> list[SupervisorSnapshot]:
    out = []
    for supervisor_id, source in list(_supervisors.items()):
        snapshot = source()
        if snapshot is None:
            _supervisors.pop(supervisor_id, None)
            _run_status.pop(supervisor_id, None)
        else:
            out.append(snapshot)
    return out


def _active_runs(_: CallbackOptions) -> Iterable[Observation]:
    for w in _worker_snapshots():
        yield Observation(w.active_runs, {"worker": w.worker_id})


def _worker_capacity(_: CallbackOptions) -> Iterable[Observation]:
    for w in _worker_snapshots():
        yield Observation(w.capacity, {"worker": w.worker_id})


def _worker_free(_: CallbackOptions) -> Iterable[Observation]:
    for w in _worker_snapshots():
        yield Observation(w.free, {"worker": w.worker_id})


def _passivated_runs(_: CallbackOptions) -> Iterable[Observation]:
    for sup in _supervisor_snapshots():
        seen = _run_status.get(sup.supervisor_id, {})
        waiting = sum(1 for status in list(seen.values()) if status == "waiting")
        yield Observation(waiting, {"supervisor": sup.supervisor_id})


def _breaker_state(_: CallbackOptions) -> Iterable[Observation]:
    for w in _worker_snapshots():
        states = w.breakers  # only the ones that are not closed
        for name in sorted(_breaker_names | set(states)):
            value = BREAKER_STATES.get(states.get(name, "closed"), 0)
            yield Observation(value, {"worker": w.worker_id, "breaker": name})


def _concurrency(index: int) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def observe(_: CallbackOptions) -> Iterable[Observation]:
        for w in _worker_snapshots():
            for rule, key, running, waiting in w.concurrency:
                labels = {"worker": w.worker_id, "rule": rule, "key": key}
                yield Observation(running if index == 2 else waiting, labels)

    return observe


def _leader(_: CallbackOptions) -> Iterable[Observation]:
    for sup in _supervisor_snapshots():
        yield Observation(1 if sup.leader else 0, {"supervisor": sup.supervisor_id})


def _pending_requests(_: CallbackOptions) -> Iterable[Observation]:
    # Only the leader reads the consumers: one series per agent across all supervisors, so
    # an HPA summing the metric does not count a standby's stale copy.
    for sup in _supervisor_snapshots():
        if sup.leader:
            for (agent, lane), pending in sorted(sup.pending.items()):
                yield Observation(pending, {"agent": agent, "lane": lane})


_meter.create_observable_gauge(
    "stalwart.requests.pending",
    callbacks=[_pending_requests],
    unit="{request}",
    description="Run requests waiting for a worker per agent and lane (num_pending + "
    "num_ack_pending of the lane's consumer), as of the leading supervisor's last pass; for "
    "autoscaling",
)
_meter.create_observable_gauge(
    "stalwart.runs.active",
    callbacks=[_active_runs],
    unit="{run}",
    description="Runs hosted by the worker now",
)
_meter.create_observable_gauge(
    "stalwart.worker.capacity",
    callbacks=[_worker_capacity],
    unit="{run}",
    description="Runs the worker hosts at most (its concurrency)",
)
_meter.create_observable_gauge(
    "stalwart.worker.free",
    callbacks=[_worker_free],
    unit="{run}",
    description="Runs the worker would take now: capacity less hosted runs, 0 while draining; "
    "for autoscaling",
)
_meter.create_observable_gauge(
    "stalwart.runs.passivated",
    callbacks=[_passivated_runs],
    unit="{run}",
    description="Runs waiting durably without a worker, as of the supervisor's last reconcile pass",
)
_meter.create_observable_gauge(
    "stalwart.breaker.state",
    callbacks=[_breaker_state],
    description="Circuit breaker state per kind:name: 0 closed, 1 half-open, 2 open",
)
_meter.create_observable_gauge(
    "stalwart.concurrency.running",
    callbacks=[_concurrency(2)],
    unit="{run}",
    description="Runs holding a slot of a concurrency limit, per rule and key (the 20 busiest "
    "keys and those with waiting runs; every worker reports the same namespace-wide value)",
)
_meter.create_observable_gauge(
    "stalwart.concurrency.waiting",
    callbacks=[_concurrency(3)],
    unit="{run}",
    description="Runs parked until a slot of their concurrency key frees, per rule and key",
)
_meter.create_observable_gauge(
    "stalwart.supervisor.leader",
    callbacks=[_leader],
    description="1 while this supervisor leads (only the leader re-places runs)",
)

# -- the Prometheus endpoint ----------------------------------------------------------------------

_provider: MeterProvider | None = None
_server: Any = None


def metrics_port(port: int | None = None) -> int:
    """The port to serve metrics on: ``port``, else ``STALWART_METRICS_PORT``; 0 means off."""
    if port is not None:
        return port
    raw = os.environ.get(METRICS_PORT_ENV, "").strip()
    try:
        return int(raw) if raw else 0
    except ValueError:
        raise ConfigurationError(f"{METRICS_PORT_ENV} must be a port number, got {raw!r}") from None


def configure_metrics(service: str, port: int, addr: str | None = None) -> int:
    """Serve Prometheus metrics on ``addr:port`` (``addr`` default ``127.0.0.1``).

    Installs a global ``MeterProvider`` with OpenTelemetry's Prometheus reader, unless the
    application installed a provider already (then that one gets the measurements and no
    endpoint is started). Returns the port served, 0 when nothing was started.
    """
    global _provider, _server
    if port <= 0 or _server is not None:
        return int(_server.server_port) if _server is not None else 0
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from prometheus_client import start_http_server

    if isinstance(metrics.get_meter_provider(), MeterProvider):
        return 0  # the application installed its own provider: it gets the measurements
    provider = MeterProvider(
        metric_readers=[PrometheusMetricReader()], resource=service_resource(service)
    )
    metrics.set_meter_provider(provider)
    if metrics.get_meter_provider() is not provider:  # someone else's (non-SDK) provider
        provider.shutdown()
        return 0
    _provider = provider
    host = addr or os.environ.get(METRICS_ADDR_ENV) or "127.0.0.1"
    try:
        _server, _ = start_http_server(port, addr=host)
    except OSError as exc:
        raise ConfigurationError(f"cannot serve metrics on {host}:{port}: {exc}") from exc
    return int(_server.server_port)


def shutdown_metrics() -> None:
    """Stop the endpoint and the provider :func:`configure_metrics` started."""
    global _server
    if _server is not None:
        _server.shutdown()
        _server.server_close()
        _server = None
    if _provider is not None:
        _provider.shutdown()
