"""The public names of each package, pinned: a change here is an API change, made on purpose."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from typing import Any

import pytest

PUBLIC_API: dict[str, list[str]] = {
    "stalwart": [
        "App",
        "BudgetExceeded",
        "CircuitOpenError",
        "Client",
        "ConfigurationError",
        "DisallowedTypeError",
        "InvalidRequestError",
        "LeaseLost",
        "Limits",
        "NO_RETRY",
        "NonDeterminismError",
        "NonRetryableError",
        "PayloadTooLargeError",
        "Policies",
        "QueueFullError",
        "RetryPolicy",
        "RunCancelled",
        "RunContext",
        "RunDeadlineExceeded",
        "RunEvent",
        "RunFailed",
        "RunHandle",
        "RunNotFoundError",
        "RunRecord",
        "RunRejected",
        "RunRequest",
        "ServerUnavailableError",
        "ServerVersionError",
        "Settings",
        "SignalRefusedError",
        "StalwartError",
        "StepFailed",
        "StepInfo",
        "StepSpec",
        "StepTimeoutError",
        "Supervisor",
        "ToolOutcomeUnknown",
        "UnknownAgentError",
        "Worker",
        "__version__",
        "current_step",
        "durable",
    ],
    "stalwart.testing": [
        "CrashStage",
        "EmbeddedServers",
        "MIN_NATS_VERSION",
        "NatsServer",
        "RedisServer",
        "ServerError",
        "ServerNotFound",
        "ServerStartError",
        "StalwartProcess",
        "crash_stage",
        "find_nats_server",
        "find_redis_server",
        "free_port",
        "nats_server_version",
        "worker_process",
    ],
    "stalwart.broker": [
        "Broker",
        "EventPublisher",
        "JSEQ_HEADER",
        "Lease",
        "LeaseManager",
        "LeaseState",
        "MIN_SERVER_VERSION",
        "Names",
        "WorkerInfo",
        "check_server_version",
        "connect",
        "ensure_agent_consumer",
        "ensure_topology",
        "subscribe_events",
    ],
    "stalwart.checkpoints": [
        "CancelOutcome",
        "CheckpointStore",
        "Claim",
        "Entry",
        "ErrorInfo",
        "Fence",
        "Finished",
        "JournalConflict",
        "JournalEntry",
        "KeySchema",
        "RunKeys",
        "RunRecord",
        "RunStatus",
        "RunStore",
        "Started",
        "StepAttempt",
        "StepDone",
        "StepError",
        "StepIntent",
        "TERMINAL_STATUSES",
        "WaitStarted",
        "decode_entry",
        "decode_value",
        "encode_entry",
        "encode_value",
        "fenced",
    ],
    "stalwart.actors": [
        "AgentSpec",
        "App",
        "RunActor",
        "RunContext",
        "StepInfo",
        "StepOptions",
        "StepSpec",
        "Usage",
        "WaitTimeout",
        "Worker",
        "current_step",
        "fingerprint",
        "options_of",
    ],
    "stalwart.adapters": [
        "DurableRunner",
        "canonical_fp",
        "default_app",
        "text_digest",
    ],
    "stalwart.supervisor": [
        "Supervisor",
        "Verdict",
        "judge",
    ],
}

MODULES = sorted(PUBLIC_API)


def _public_objects() -> list[tuple[str, str]]:
    return [(module, name) for module in MODULES for name in PUBLIC_API[module]]


def test_pinned_lists_are_sorted_and_unique() -> None:
    for module, names in PUBLIC_API.items():
        assert names == sorted(names), f"keep the pinned list of {module} sorted"
        assert len(set(names)) == len(names), module


@pytest.mark.parametrize("module_name", MODULES)
def test_all_is_pinned(module_name: str) -> None:
    module = importlib.import_module(module_name)
    exported = list(module.__all__)
    assert len(set(exported)) == len(exported), f"{module_name}.__all__ has duplicates"
    assert sorted(exported) == PUBLIC_API[module_name]


@pytest.mark.parametrize("module_name", MODULES)
def test_star_import_gives_exactly_all(module_name: str) -> None:
    scope: dict[str, Any] = {}
    exec(f"from {module_name} import *", scope)
    scope.pop("__builtins__", None)
    assert sorted(scope) == PUBLIC_API[module_name]


def _own_doc(obj: Any) -> str:
    """The object's own docstring: not inherited, not the one dataclasses generate."""
    doc = vars(obj).get("__doc__") if inspect.isclass(obj) else obj.__doc__
    if not doc:
        return ""
    if inspect.isclass(obj) and dataclasses.is_dataclass(obj):
        try:
            generated = obj.__name__ + str(inspect.signature(obj)).replace(" -> None", "")
        except (TypeError, ValueError):
            generated = ""
        if doc == generated:
            return ""
    return str(doc).strip()


@pytest.mark.parametrize(("module_name", "name"), _public_objects(), ids="{0[0]}.{0[1]}".format)
def test_public_name_importable_and_documented(module_name: str, name: str) -> None:
    module = importlib.import_module(module_name)
    assert hasattr(module, name), f"{module_name}.{name} is in __all__ but does not exist"
    obj = getattr(module, name)
    if inspect.isclass(obj) or inspect.isfunction(obj):
        assert _own_doc(obj), f"{module_name}.{name} has no docstring"


def test_version_matches_package_metadata() -> None:
    from importlib.metadata import version

    import stalwart

    assert stalwart.__version__ == version("stalwart")


def test_reexports_are_the_same_objects() -> None:
    import stalwart
    from stalwart import actors, checkpoints, supervisor

    assert stalwart.App is actors.App
    assert stalwart.RunContext is actors.RunContext
    assert stalwart.current_step is actors.current_step
    assert stalwart.RunRecord is checkpoints.RunRecord
    assert stalwart.Supervisor is supervisor.Supervisor
    assert issubclass(stalwart.ServerVersionError, stalwart.ConfigurationError)
    assert issubclass(stalwart.UnknownAgentError, stalwart.InvalidRequestError)
    for name in stalwart.__all__:
        obj = getattr(stalwart, name)
        if inspect.isclass(obj) and issubclass(obj, BaseException):
            assert issubclass(obj, stalwart.StalwartError), name
