"""The public names of each package, pinned: a change here is an API change, made on purpose."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import warnings
from typing import Any

import pytest

PUBLIC_API: dict[str, list[str]] = {
    "stalwart": [
        "App",
        "BudgetExceeded",
        "Chunk",
        "CircuitOpenError",
        "Client",
        "ConfigurationError",
        "ConversationBusyError",
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
        "Reset",
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
        "StepDone",
        "StepFailed",
        "StepInfo",
        "StepSpec",
        "StepTimeoutError",
        "StreamEnd",
        "StreamPart",
        "StreamText",
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
        "NatsCluster",
        "NatsServer",
        "RedisClusterServer",
        "RedisHA",
        "RedisServer",
        "RoutePortTaken",
        "SentinelServer",
        "ServerError",
        "ServerNotFound",
        "ServerStartError",
        "ServerTLS",
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
        "AesGcmCodec",
        "CancelOutcome",
        "CheckpointStore",
        "Claim",
        "ConversationClaim",
        "ConversationFenced",
        "ConversationInfo",
        "ConversationStore",
        "Entry",
        "ErrorInfo",
        "Fence",
        "Finished",
        "JournalConflict",
        "JournalEntry",
        "JournalGap",
        "KeySchema",
        "OnBusy",
        "PayloadCodec",
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
        "check_conversation_id",
        "check_on_busy",
        "decode_entry",
        "decode_value",
        "encode_entry",
        "encode_value",
        "envelope_header",
        "envelope_key_id",
        "fenced",
        "open_bytes",
        "payload_codec",
        "read_envelope_header",
        "redis_clients",
        "seal_bytes",
        "set_payload_codec",
    ],
    "stalwart.actors": [
        "AgentSpec",
        "App",
        "Conversation",
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
        "StreamReset",
        "canonical_fp",
        "default_app",
        "text_digest",
    ],
    "stalwart.supervisor": [
        "Supervisor",
        "Verdict",
        "judge",
    ],
    "stalwart.conversations": [
        "WAKE_SIGNAL",
        "interrupt",
        "recover",
        "release",
        "release_ended",
    ],
    "stalwart.errors": [
        "ApprovalRefusedError",
        "BudgetExceeded",
        "CircuitOpenError",
        "ConfigurationError",
        "ConversationBusyError",
        "CorruptRecordError",
        "DisallowedTypeError",
        "InvalidRequestError",
        "LeaseLost",
        "NonDeterminismError",
        "NonRetryableError",
        "PayloadKeyError",
        "PayloadTooLargeError",
        "QueueFullError",
        "RunCancelled",
        "RunDeadlineExceeded",
        "RunFailed",
        "RunNotFoundError",
        "RunRejected",
        "ServerUnavailableError",
        "ServerVersionError",
        "SignalRefusedError",
        "StalwartError",
        "StepFailed",
        "StepTimeoutError",
        "ToolOutcomeUnknown",
        "UnknownAgentError",
    ],
    "stalwart.messages": [
        "ConcurrencyWaitingData",
        "EVENT_DATA",
        "EV_ACCEPTED",
        "EV_CANCELLED",
        "EV_COMPLETED",
        "EV_CONCURRENCY_WAITING",
        "EV_FAILED",
        "EV_LEASE_LOST",
        "EV_OUTCOME_UNKNOWN",
        "EV_PASSIVATED",
        "EV_REJECTED",
        "EV_RELEASED",
        "EV_RESUMED",
        "EV_SIGNAL",
        "EV_STARTED",
        "EV_STEP_COMPLETED",
        "EV_STEP_FAILED",
        "EV_STEP_INTENT",
        "EV_STEP_RESET",
        "EV_STEP_RETRYING",
        "EV_STEP_STARTED",
        "EV_STUCK",
        "EV_WAIT_STARTED",
        "ErrorData",
        "EventData",
        "EventType",
        "OutcomeUnknownData",
        "ReasonData",
        "RequestKind",
        "RequestRejectedData",
        "RunAcceptedData",
        "RunEndedData",
        "RunEvent",
        "RunPassivatedData",
        "RunRequest",
        "RunResumedData",
        "RunStuckData",
        "SignalReceivedData",
        "StepEndedData",
        "StepIntentData",
        "StepKind",
        "StepResetData",
        "StepRetryingData",
        "StepStartedData",
        "TERMINAL_EVENTS",
        "WaitStartedData",
        "data_dict",
        "decode_event",
        "decode_request",
        "encode_event",
        "encode_request",
        "event_data",
        "read_event",
    ],
    "stalwart.policies": [
        "Breakers",
        "CircuitBreaker",
        "DEFAULT_PRICES",
        "DEFAULT_RETRY",
        "Limits",
        "NO_RETRY",
        "OnUnknown",
        "Policies",
        "RetryPolicy",
        "RunUsage",
        "StepOptions",
        "classify",
        "durable",
        "options_of",
    ],
    "stalwart.flow": [
        "ADMIT",
        "BreakerStatus",
        "ConcurrencyKeyUsage",
        "ConcurrencyLimit",
        "ConcurrencyUsage",
        "EV_FLOW_RESUMED",
        "EV_FLOW_WAITING",
        "FlowCall",
        "FlowGate",
        "FlowRule",
        "FlowStore",
        "Hold",
        "LimitSnapshot",
        "Outcome",
        "RESUME_SIGNAL",
        "RateLimit",
        "RetryBudget",
        "RetryBudgetStatus",
        "RuleHandle",
        "RuleInfo",
        "SharedBreaker",
        "SpendLimit",
        "breaker_snapshot",
        "check_rules",
        "concurrency_snapshot",
        "flow_snapshot",
        "publish_rules",
        "retry_budget_snapshot",
        "rule_info",
    ],
    "stalwart.builds": [
        "BuildEntry",
        "BuildRegistry",
        "BuildState",
        "check_build",
        "compatible",
        "compatible_builds",
        "declare_compatible",
        "derive_build",
        "routing_lane",
        "split_lane",
    ],
    "stalwart.approvals": [
        "APPROVAL_KIND",
        "ApprovalRequest",
        "Verdict",
        "approval_payload",
        "check_approval",
        "pending_approvals",
        "signal_time",
    ],
    "stalwart.kit": [
        "ApprovalDecision",
        "ApprovalPolicy",
        "DIGEST_FIELDS",
        "DurableRunner",
        "DurableScope",
        "Outcome",
        "Patched",
        "SETTLE_SECONDS",
        "ScopeVar",
        "StepCall",
        "StreamReset",
        "ToolCallFailed",
        "allow_map",
        "args_hash",
        "await_approval",
        "build",
        "call_step",
        "canonical_fp",
        "canonical_json",
        "check_max_iterations",
        "check_source",
        "decide_approval",
        "default_app",
        "failure_outcome",
        "in_step",
        "loaded_class",
        "model_record",
        "model_response",
        "model_step",
        "nondeterminism",
        "request_approval",
        "shape_changes",
        "stream_step",
        "text_digest",
        "tool_key",
        "type_path",
    ],
    "stalwart.servers": [
        "EmbeddedServers",
        "MIN_NATS_VERSION",
        "NatsCluster",
        "NatsServer",
        "RedisClusterServer",
        "RedisHA",
        "RedisServer",
        "RoutePortTaken",
        "SentinelServer",
        "ServerError",
        "ServerNotFound",
        "ServerStartError",
        "ServerTLS",
        "find_nats_server",
        "find_redis_server",
        "free_port",
        "nats_server_version",
    ],
    "stalwart.observability": [
        "AttemptError",
        "History",
        "JsonLinesSpanExporter",
        "METRICS_ADDR_ENV",
        "METRICS_PORT_ENV",
        "PAYLOADS_ENV",
        "Placement",
        "ReplayReport",
        "StepRow",
        "TRACING_ENV",
        "add_trace_ids",
        "build_history",
        "configure",
        "configure_metrics",
        "configure_tracing",
        "format_history",
        "history_json",
        "metrics_port",
        "payloads_enabled",
        "read_span_file",
        "redact",
        "replay_run",
        "set_tracer_provider",
        "shutdown",
    ],
    "stalwart.operations": [
        "AgentView",
        "ConversationView",
        "EpochView",
        "GateReport",
        "RunDetail",
        "RunPage",
        "RunPlacement",
        "RunQuery",
        "RunSummary",
        "SignalView",
        "TimelineStep",
        "WaitView",
        "WorkerView",
        "agents",
        "conversation_view",
        "list_runs",
        "replay_recent",
        "run_detail",
        "workers",
    ],
    "stalwart.client": [
        "Chunk",
        "Client",
        "Reset",
        "RunHandle",
        "StepDone",
        "StreamEnd",
        "StreamPart",
        "StreamText",
    ],
    "stalwart.console": ["Guard", "create_app", "new_token", "serve"],
    "stalwart.api": [
        "ApiError",
        "ApiServer",
        "ApproveRequest",
        "CancelReply",
        "CancelRequest",
        "ERROR_HEADER",
        "ErrorCode",
        "OPERATIONS",
        "QUEUE_GROUP",
        "REPLIES",
        "ResultReply",
        "ResultRequest",
        "SignalReply",
        "SignalRequest",
        "StatusReply",
        "StatusRequest",
        "SubmitReply",
        "SubmitRequest",
        "serve_api",
    ],
    "stalwart.contract": ["CONTRACT_VERSION", "build_contract", "render_contract"],
    "stalwart.adapters.openai_agents": [
        "DurableAgentRunner",
        "DurableModel",
        "DurableModelProvider",
        "DurableRunResultStreaming",
        "SessionHistoryError",
        "StalwartSession",
        "StepRawResponsesStreamEvent",
        "durable_run_config",
    ],
    "stalwart.adapters.pydantic_ai": [
        "AgentRequest",
        "DurableAgentRunner",
        "DurableRunEvents",
        "DurableStreamedRunResult",
        "HistoryConflict",
        "OutputNotSerializable",
        "StalwartDurability",
        "ToolResultNotSerializable",
    ],
    "stalwart.adapters.langgraph": [
        "DurableGraphRunner",
        "GraphInterrupted",
        "InterruptHandler",
        "KIND_INTERRUPT",
        "KIND_MODEL",
        "KIND_NODE",
        "SafeSerializer",
        "StalwartSaver",
        "TaskWritten",
        "ThreadBusy",
        "to_builtins",
    ],
    "stalwart.adapters.strands": [
        "DurableAgentResult",
        "DurableAgentRunner",
        "ScriptedModel",
        "ToolError",
        "instrument",
        "reply",
        "tool_call",
    ],
    "stalwart.adapters.crewai": [
        "AgentResult",
        "CrewResult",
        "DurableAgentRunner",
        "DurableCrewRunner",
        "DurableCrewStreamingOutput",
        "DurableStreamChunk",
        "ScriptedLLM",
        "TaskResult",
        "ToolCallFailed",
        "crew_result",
        "install",
        "text",
        "tool_call",
        "tool_results",
    ],
}

MODULES = sorted(PUBLIC_API)

# Adapter packages import their framework; where it is not installed (CrewAI lives in a venv of
# its own, it pins another openai) the package's pins are checked in that environment instead.
FRAMEWORKS = {
    "stalwart.adapters.crewai": "crewai",
    "stalwart.adapters.langgraph": "langgraph",
    "stalwart.adapters.openai_agents": "agents",
    "stalwart.adapters.pydantic_ai": "pydantic_ai",
    "stalwart.adapters.strands": "strands",
}


def _import(module_name: str) -> Any:
    try:
        if module_name not in FRAMEWORKS:
            return importlib.import_module(module_name)
        with warnings.catch_warnings():
            # Frameworks warn about their own deprecated fields while they import (CrewAI
            # does): not what this test is about, and filterwarnings=error would fail it.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", ImportWarning)
            return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        framework = FRAMEWORKS.get(module_name)
        missing = (exc.name or "").split(".")[0]
        if framework is None or missing in ("", "stalwart"):
            raise  # a module of ours is missing: that is a failure, not a skip
        pytest.skip(f"{module_name} needs {framework} ({missing} is not installed here)")


def _public_objects() -> list[tuple[str, str]]:
    return [(module, name) for module in MODULES for name in PUBLIC_API[module]]


def test_pinned_lists_are_sorted_and_unique() -> None:
    for module, names in PUBLIC_API.items():
        assert names == sorted(names), f"keep the pinned list of {module} sorted"
        assert len(set(names)) == len(names), module


@pytest.mark.parametrize("module_name", MODULES)
def test_all_is_pinned(module_name: str) -> None:
    module = _import(module_name)
    exported = list(module.__all__)
    assert len(set(exported)) == len(exported), f"{module_name}.__all__ has duplicates"
    assert sorted(exported) == PUBLIC_API[module_name]


@pytest.mark.parametrize("module_name", MODULES)
def test_star_import_gives_exactly_all(module_name: str) -> None:
    _import(module_name)
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
    module = _import(module_name)
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


def test_each_error_and_policy_has_one_import_path() -> None:
    """Errors are exported by stalwart.errors (and the root package) only; policies by
    stalwart.policies (and the root package, and StepOptions/options_of by stalwart.actors,
    which agent code uses with ctx.step)."""
    import stalwart
    from stalwart import errors, policies, servers, testing

    for module_name in MODULES:
        if module_name in ("stalwart", "stalwart.errors", "stalwart.policies"):
            continue
        module = _try_import(module_name)
        if module is None:
            continue
        for name in module.__all__:
            home = getattr(getattr(module, name), "__module__", "")
            assert home != "stalwart.errors", f"{module_name} re-exports the error {name}"
            if home == "stalwart.policies":
                assert (module_name, name) in {
                    ("stalwart.actors", "StepOptions"),
                    ("stalwart.actors", "options_of"),
                }, f"{module_name} re-exports the policy name {name}"
    for name in errors.__all__:
        error = getattr(errors, name)
        assert issubclass(error, errors.StalwartError), name
        if name in stalwart.__all__:
            assert getattr(stalwart, name) is error
    for name in ("NO_RETRY", "Limits", "Policies", "RetryPolicy", "durable"):
        assert getattr(stalwart, name) is getattr(policies, name)
    for name in servers.__all__:
        assert getattr(testing, name) is getattr(servers, name)


def _try_import(module_name: str) -> Any:
    try:
        return _import(module_name)
    except pytest.skip.Exception:
        return None
