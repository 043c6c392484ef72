"""The adapter kit: what every framework adapter is built from.

An adapter keeps its framework's own loop and turns the loop's model and tool calls into
durable steps. The pieces that do not depend on the framework live here, public, so every
adapter (Stalwart's five, and yours) is built the same way and imports only this:

- **Runner.** :class:`DurableRunner` registers one agent into an ``App`` and submits runs;
  :func:`build` and :func:`check_source` give every runner "an object or a factory",
  :func:`check_max_iterations` the one ``max_iterations`` rule.
- **Scope.** :class:`ScopeVar` carries the current :class:`DurableScope` into the
  framework's tasks; a scope makes step keys (prefix and counters), opens child scopes for
  nested agents, and remembers the error that must end the run (:meth:`DurableScope.step`,
  :meth:`DurableScope.finish`). :func:`in_step` binds a step to a framework thread.
- **Steps.** :func:`call_step` runs a step so that cancelling the caller never cuts a
  journal write; :func:`stream_step` yields the events its body forwards.
- **Model steps.** :func:`model_step` journals a response with the request's shape and
  raises one :class:`~stalwart.errors.NonDeterminismError` that says what changed
  (:func:`shape_changes`).
- **Keys.** :func:`tool_key` (call id, else name and a digest of the canonical arguments),
  :func:`canonical_fp`, :func:`canonical_json`, :func:`text_digest`.
- **Failures.** :func:`failure_outcome` tells a tool's own error (shown to the model) from a
  run-level stop; :class:`ToolCallFailed` is the one tool-failure error.
- **Approvals.** :func:`await_approval` asks a human to approve one tool call, bound to
  its tool and the hash of its arguments (:func:`args_hash`), with an expiry, under an
  :class:`ApprovalPolicy`; it returns an :class:`ApprovalDecision` (:func:`request_approval`
  and :func:`decide_approval` are its two halves, for several calls at once).
- **Versions.** :class:`Patched`: a runner's factory that builds the new framework object
  (prompt, tools) for new runs and the old one for runs already under way (a patch marker).
- **Streams.** :meth:`DurableRunner.stream_parts` / :meth:`DurableRunner.stream_handle`
  give a run's attempt-aware stream; :class:`StreamReset` is what an adapter yields in its
  framework's own stream when a step's attempt died (docs/streaming.md).
- **Allow-lists.** :func:`type_path`, :func:`allow_map`, :func:`loaded_class`: how codecs
  rebuild classes a journal names without importing anything.
"""

from stalwart.kit._allowed import allow_map, loaded_class, type_path
from stalwart.kit._approvals import (
    ApprovalDecision,
    ApprovalPolicy,
    args_hash,
    await_approval,
    decide_approval,
    request_approval,
)
from stalwart.kit._failures import Outcome, ToolCallFailed, failure_outcome
from stalwart.kit._keys import canonical_fp, canonical_json, text_digest, tool_key
from stalwart.kit._model import (
    DIGEST_FIELDS,
    model_record,
    model_response,
    model_step,
    nondeterminism,
    shape_changes,
)
from stalwart.kit._runner import (
    DurableRunner,
    build,
    check_max_iterations,
    check_source,
    default_app,
)
from stalwart.kit._scope import DurableScope, ScopeVar, in_step
from stalwart.kit._steps import SETTLE_SECONDS, StepCall, call_step, stream_step
from stalwart.kit._streams import StreamReset
from stalwart.kit._versions import Patched

__all__ = [
    "DIGEST_FIELDS",
    "SETTLE_SECONDS",
    "ApprovalDecision",
    "ApprovalPolicy",
    "DurableRunner",
    "DurableScope",
    "Outcome",
    "Patched",
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
]
