"""Tool, handoff and guardrail calls as durable steps, on a durable twin of the agent graph.

The user's agents are never modified. :class:`AgentGraph` clones each agent reachable from
the starting one (handoff targets, agents used as tools) and swaps in wrappers:

- function tools: ``dataclasses.replace(tool, on_invoke_tool=...)``, the step
  ``tool:<tool_call_id>`` (the id comes from the journaled model response, so it is the
  same on replay, whatever order concurrent calls arrive in);
- agents used as tools (``Agent.as_tool``): not a step themselves; the nested run is
  re-run on replay with its own scope ``tool:<call_id>/``, so its model and tool calls
  replay one by one;
- handoffs: the step ``handoff:<n>`` (runs the handoff's ``on_handoff`` callback once);
- input and output guardrails: the step ``guardrail:<name>``, journaling the verdict (a
  guardrail that runs its own agent is one step, its model calls inside it);
- models given as ``Model`` instances: :class:`DurableModel` (models named by string are
  reached through the run config's :class:`DurableModelProvider`).
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import types
import weakref
from typing import TYPE_CHECKING, Any, cast

from agents import Agent
from agents.handoffs import Handoff
from agents.handoffs import handoff as make_handoff
from agents.models.interface import Model
from agents.tool import (
    ApplyPatchTool,
    ComputerTool,
    CustomTool,
    FunctionTool,
    LocalShellTool,
    ShellTool,
    _FailureHandlingFunctionToolInvoker,
)
from agents.tool_guardrails import ToolGuardrailFunctionOutput
from pydantic_core import to_jsonable_python

from stalwart.actors import StepSpec
from stalwart.adapters.openai_agents._codec import (
    canonical_args,
    dump_guardrail_output,
    dump_tool_output,
    load_guardrail_output,
    without_volatile,
)
from stalwart.adapters.openai_agents._context import restore, snapshot
from stalwart.adapters.openai_agents._model import SCOPE, DurableModel
from stalwart.adapters.openai_agents._stepdata import (
    account_inner_usage,
    counting_usage,
    mark_replayed,
    record_field,
    step_record,
)
from stalwart.errors import ConfigurationError, StepFailed
from stalwart.kit import ToolCallFailed, call_step, canonical_fp, failure_outcome, tool_key

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from agents.guardrail import GuardrailFunctionOutput, InputGuardrail, OutputGuardrail
    from agents.run_context import RunContextWrapper
    from agents.tool import Tool
    from agents.tool_context import ToolContext

# Tools the SDK runs locally through an interface other than FunctionTool.on_invoke_tool:
# not journaled yet, so on replay they would run again. Refused rather than silently unsafe.
_UNSUPPORTED_TOOLS = (ComputerTool, CustomTool, ApplyPatchTool, LocalShellTool)


class AgentGraph:
    """Durable clones of agents, memoised so cycles (A hands off to B, B back to A) close."""

    def __init__(self) -> None:
        self._clones: dict[int, Agent[Any]] = {}
        self._clone_ids: set[int] = set()
        self._originals: list[Agent[Any]] = []  # keeps ids in _clones from being reused

    def agent(self, agent: Agent[Any]) -> Agent[Any]:
        """The durable clone of ``agent`` (the same object for the same agent)."""
        if id(agent) in self._clone_ids:  # a clone reached again, e.g. a handoff back to it
            return agent
        clone = self._clones.get(id(agent))
        if clone is not None:
            return clone
        _check_supported(agent)
        clone = agent.clone()
        self._clones[id(agent)] = clone
        self._clone_ids.add(id(clone))
        self._originals.append(agent)
        clone.tools = [self.tool(t) for t in agent.tools]
        clone.handoffs = [self.handoff(h) for h in agent.handoffs]
        clone.input_guardrails = [durable_input_guardrail(g) for g in agent.input_guardrails]
        clone.output_guardrails = [durable_output_guardrail(g) for g in agent.output_guardrails]
        if isinstance(agent.model, Model) and not isinstance(agent.model, DurableModel):
            # Assigned, not passed to clone(): clone(model=...) could reset model_settings.
            clone.model = DurableModel(agent.model)
        return clone

    def find(self, name: str) -> Agent[Any]:
        """The durable clone of the agent called ``name`` (a run's starting agent by name)."""
        for clone in self._clones.values():
            if clone.name == name:
                return clone
        known = sorted({c.name for c in self._clones.values()})
        raise ConfigurationError(
            f"no agent {name!r} is reachable from this runner's agent (through handoffs or "
            f"agents used as tools); known: {', '.join(map(repr, known))}"
        )

    def tool(self, tool: Tool) -> Tool:
        """The durable version of one tool (hosted tools run inside the model call: kept)."""
        if not isinstance(tool, FunctionTool) or getattr(tool, "_stalwart_durable", False):
            return tool
        if tool._is_agent_tool and isinstance(tool._agent_instance, Agent):
            nested = self._agent_tool(tool)
            if nested is not None:
                return nested
        return _mark(
            dataclasses.replace(
                tool, on_invoke_tool=_durable_invoke(tool), **durable_tool_guardrails(tool)
            )
        )

    def _agent_tool(self, tool: FunctionTool) -> FunctionTool | None:
        """``Agent.as_tool``: the nested run re-runs on replay, in the scope ``tool:<id>/``.

        ``as_tool`` keeps its agent in a closure; the same function is rebuilt with the
        durable clone in that cell, everything else (extractor, max turns, hooks) as given.
        None when the closure is not the expected one, or when the tool has a run config of
        its own (its model calls would bypass the durable provider): the caller then makes
        the whole nested run one step.
        """
        invoker = tool.on_invoke_tool
        if not isinstance(invoker, _FailureHandlingFunctionToolInvoker):
            return None
        impl = invoker._invoke_tool_impl
        if not isinstance(impl, types.FunctionType) or impl.__closure__ is None:
            return None
        cells = dict(zip(impl.__code__.co_freevars, impl.__closure__, strict=True))
        agent_cell = cells.get("self")
        config_cell = cells.get("run_config")
        if agent_cell is None or agent_cell.cell_contents is not tool._agent_instance:
            return None
        if config_cell is None or config_cell.cell_contents is not None:
            return None
        clone = self.agent(cast("Agent[Any]", tool._agent_instance))
        closure = tuple(
            types.CellType(clone) if cell is agent_cell else cell for cell in impl.__closure__
        )
        rebuilt = types.FunctionType(
            impl.__code__, impl.__globals__, impl.__name__, impl.__defaults__, closure
        )
        rebuilt.__kwdefaults__ = impl.__kwdefaults__
        rebuilt.__dict__.update(impl.__dict__)
        new_invoker = copy.copy(invoker)
        new_invoker._invoke_tool_impl = rebuilt
        new_invoker._function_tool = None
        # replace() binds the copied invoker to the new tool (its failure handling).
        bound = dataclasses.replace(tool, on_invoke_tool=new_invoker, _agent_instance=clone)
        return _mark(
            dataclasses.replace(
                bound, on_invoke_tool=_nested_invoke(bound), **durable_tool_guardrails(bound)
            )
        )

    def handoff(self, target: Agent[Any] | Handoff[Any, Any]) -> Handoff[Any, Any]:
        """A handoff whose target is the durable clone, invoked as the step ``handoff:<n>``."""
        original = make_handoff(target) if isinstance(target, Agent) else target
        ref = original._agent_ref() if original._agent_ref is not None else None
        durable_target = self.agent(ref) if isinstance(ref, Agent) else None
        wrapped = dataclasses.replace(
            original, on_invoke_handoff=self._durable_handoff(original, ref)
        )
        if durable_target is not None:
            wrapped._agent_ref = weakref.ref(durable_target)  # the clone lives in self._clones
        return wrapped

    def _durable_handoff(
        self, original: Handoff[Any, Any], ref: Any
    ) -> Callable[[RunContextWrapper[Any], str], Awaitable[Agent[Any]]]:
        invoke = original.on_invoke_handoff

        async def on_invoke_handoff(context: RunContextWrapper[Any], input_json: str) -> Agent[Any]:
            scope = SCOPE.active()
            if scope is None:
                return self.agent(await invoke(context, input_json))
            spec = StepSpec(
                key=scope.next_key("handoff"),
                kind="handoff",
                name=original.tool_name,
                fp=canonical_fp(original.tool_name, canonical_args(input_json)),
            )
            live: list[Agent[Any]] = []

            async def body() -> dict[str, Any]:
                with counting_usage() as used:
                    target = await invoke(context, input_json)
                live.append(target)
                # on_handoff may change the context: its state is journaled with the step.
                return step_record(
                    target=str(target.name), context=snapshot(context.context), usage=used
                )

            record = await call_step(scope.ctx, spec, body)
            await account_inner_usage(scope.ctx, spec.key, record)
            if not live:
                restore(context.context, record_field(record, "context"))
                mark_replayed("handoff", spec.key, handoff=original.tool_name)
                if isinstance(ref, Agent):
                    return self.agent(ref)
                # Replayed, and the handoff keeps no reference to its target: ask it again
                # (its on_handoff callback, if any, runs again).
                return self.agent(await invoke(context, input_json))
            return self.agent(live[0])

        return on_invoke_handoff


def _mark(tool: FunctionTool) -> FunctionTool:
    tool._stalwart_durable = True  # type: ignore[attr-defined]
    return tool


def _check_supported(agent: Agent[Any]) -> None:
    bad = [
        t.name if hasattr(t, "name") else type(t).__name__
        for t in agent.tools
        if isinstance(t, _UNSUPPORTED_TOOLS)
        or (isinstance(t, ShellTool) and t.executor is not None)
    ]
    if bad:
        raise ConfigurationError(
            f"agent {agent.name!r}: tool(s) {', '.join(map(repr, bad))} run locally outside "
            "FunctionTool and are not journaled yet, so a resumed run would run them again; "
            "wrap the action in a @function_tool instead"
        )
    if agent.mcp_servers:
        raise ConfigurationError(
            f"agent {agent.name!r}: MCP servers are not supported by the durable runner yet "
            "(their tool calls would run again on resume); expose the calls you need as "
            "@function_tool functions"
        )


def _durable_invoke(tool: FunctionTool) -> Callable[[ToolContext[Any], str], Awaitable[Any]]:
    """``on_invoke_tool`` that makes each call the step ``tool:<tool_call_id>``."""
    invoke = tool.on_invoke_tool
    typed = tool.output_json_schema is not None or tool._output_type_adapter is not None

    async def on_invoke_tool(context: ToolContext[Any], arguments: str) -> Any:
        scope = SCOPE.active()
        if scope is None:
            return await invoke(context, arguments)
        args = canonical_args(arguments)
        call_id = context.tool_call_id
        base = tool_key(call_id, tool.name, args)
        # The Model interface requires call ids; one without is known by name + arguments.
        key = scope.key(base) if call_id else scope.next_named(base)
        spec = StepSpec(
            key=key,
            kind="tool",
            name=tool.name,
            fp=canonical_fp(tool.name, args),
        )
        ran = False

        async def body() -> dict[str, Any]:
            nonlocal ran
            ran = True
            with counting_usage() as used:
                output = await invoke(context, arguments)
            # The tool may have changed the context: its state is journaled with the output.
            return step_record(
                output=dump_tool_output(output, typed=typed),
                context=snapshot(context.context),
                usage=used,
            )

        try:
            record = await call_step(scope.ctx, spec, body)
        except StepFailed as failed:
            if not ran:
                mark_replayed("tool", spec.key, tool=tool.name, failed=True)
            if failure_outcome(failed) != "tool_error":
                raise
            # The tool's own error (failure_error_function=None): it reads as the tool's
            # message, so the SDK raises the same UserError as without Stalwart.
            raise ToolCallFailed.of(failed) from failed
        await account_inner_usage(scope.ctx, spec.key, record)
        if not ran:
            restore(context.context, record_field(record, "context"))
            mark_replayed("tool", spec.key, tool=tool.name)
        return record_field(record, "output", record)

    return on_invoke_tool


def _nested_invoke(tool: FunctionTool) -> Callable[[ToolContext[Any], str], Awaitable[Any]]:
    """``on_invoke_tool`` for an agent used as a tool: its nested run gets its own scope."""
    invoke = tool.on_invoke_tool

    async def on_invoke_tool(context: ToolContext[Any], arguments: str) -> Any:
        scope = SCOPE.active()
        if scope is None:
            return await invoke(context, arguments)
        with SCOPE.using(scope.child(f"tool:{context.tool_call_id}")):
            return await invoke(context, arguments)

    return on_invoke_tool


def _durable_guardrail_function(
    kind: str, name: str, fn: Callable[..., Any]
) -> Callable[[RunContextWrapper[Any], Agent[Any], Any], Awaitable[GuardrailFunctionOutput]]:
    async def guardrail_function(
        context: RunContextWrapper[Any], agent: Agent[Any], value: Any
    ) -> GuardrailFunctionOutput:
        async def call() -> GuardrailFunctionOutput:
            result = fn(context, agent, value)
            if inspect.isawaitable(result):
                result = await result
            return cast("GuardrailFunctionOutput", result)

        scope = SCOPE.active()
        if scope is None:
            return await call()
        spec = StepSpec(
            key=scope.next_named(f"guardrail:{name}"),
            kind="guardrail",
            name=f"{kind} guardrail {name}",
            fp=canonical_fp(f"guardrail:{kind}:{name}", without_volatile(value)),
        )
        ran = False

        async def body() -> dict[str, Any]:
            nonlocal ran
            ran = True
            # A guardrail that runs an agent of its own: its model calls count in this step.
            with counting_usage() as used:
                verdict = await call()
            return step_record(
                verdict=dump_guardrail_output(verdict),
                context=snapshot(context.context),
                usage=used,
            )

        record = await call_step(scope.ctx, spec, body)
        await account_inner_usage(scope.ctx, spec.key, record)
        if not ran:
            restore(context.context, record_field(record, "context"))
            mark_replayed("guardrail", spec.key, guardrail=name)
        verdict = record_field(record, "verdict", record)
        return load_guardrail_output(verdict)

    return guardrail_function


def durable_input_guardrail(guardrail: InputGuardrail[Any]) -> InputGuardrail[Any]:
    """An input guardrail whose verdict is the step ``guardrail:<name>``."""
    name = guardrail.get_name()
    fn = _durable_guardrail_function("input", name, guardrail.guardrail_function)
    return dataclasses.replace(guardrail, guardrail_function=fn, name=name)


def durable_output_guardrail(guardrail: OutputGuardrail[Any]) -> OutputGuardrail[Any]:
    """An output guardrail whose verdict is the step ``guardrail:<name>``."""
    name = guardrail.get_name()
    fn = _durable_guardrail_function("output", name, guardrail.guardrail_function)
    return dataclasses.replace(guardrail, guardrail_function=fn, name=name)


# -- tool guardrails: the SDK runs them around the tool call, outside on_invoke_tool -------


def durable_tool_guardrails(tool: FunctionTool) -> dict[str, Any]:
    """``tool_input_guardrails`` / ``tool_output_guardrails`` whose verdicts are steps.

    The SDK runs them around ``on_invoke_tool``, so the tool's own step does not cover them:
    each becomes the step ``<tool step key>:input:<name>`` (or ``:output:``), journaling its
    verdict (and the context's state), so a resumed run does not run it, or an agent it
    runs, again.
    """
    fields: dict[str, Any] = {}
    for kind in ("input", "output"):
        guardrails = getattr(tool, f"tool_{kind}_guardrails", None)
        if guardrails:
            fields[f"tool_{kind}_guardrails"] = [
                dataclasses.replace(g, guardrail_function=_tool_guardrail(kind, tool, g))
                for g in guardrails
            ]
    return fields


def _tool_guardrail(
    kind: str, tool: FunctionTool, guardrail: Any
) -> Callable[[Any], Awaitable[ToolGuardrailFunctionOutput]]:
    name = guardrail.get_name()
    fn = guardrail.guardrail_function

    async def guardrail_function(data: Any) -> ToolGuardrailFunctionOutput:
        async def call() -> ToolGuardrailFunctionOutput:
            result = fn(data)
            if inspect.isawaitable(result):
                result = await result
            return cast("ToolGuardrailFunctionOutput", result)

        scope = SCOPE.active()
        context = data.context
        if scope is None:
            return await call()
        args = canonical_args(context.tool_arguments or "")
        base = tool_key(context.tool_call_id, tool.name, args)
        payload = without_volatile(getattr(data, "output", None)) if kind == "output" else args
        key = f"{base}:{kind}:{name}"
        spec = StepSpec(
            key=scope.key(key) if context.tool_call_id else scope.next_named(key),
            kind="guardrail",
            name=f"tool {kind} guardrail {name}",
            fp=canonical_fp(f"guardrail:tool_{kind}:{name}", payload),
        )
        ran = False

        async def body() -> dict[str, Any]:
            nonlocal ran
            ran = True
            with counting_usage() as used:
                verdict = await call()
            return step_record(
                output_info=to_jsonable_python(verdict.output_info, fallback=str),
                behavior=dict(verdict.behavior),
                context=snapshot(context.context),
                usage=used,
            )

        record = await call_step(scope.ctx, spec, body)
        await account_inner_usage(scope.ctx, spec.key, record)
        if not ran:
            restore(context.context, record_field(record, "context"))
            mark_replayed("guardrail", spec.key, guardrail=name)
        return ToolGuardrailFunctionOutput(
            output_info=record_field(record, "output_info"),
            behavior=cast("Any", record_field(record, "behavior") or {"type": "allow"}),
        )

    return guardrail_function
