"""Installing the wrappers on CrewAI's model and tool classes, once per process.

CrewAI creates models and tools on its own during a run (a hierarchical crew's manager, the
delegation tools, copies of agents), so wrapping instances would miss calls. The wrappers go
on the classes instead, and do nothing outside a durable run (no
:func:`~stalwart.adapters.crewai._threads.current_run` in the calling context): a crew kicked
off directly behaves exactly as before.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from crewai.agents.agent_executor import AgentExecutor
from crewai.core.providers.human_input import SyncHumanInputProvider
from crewai.hooks.tool_hooks import ToolCallHookContext
from crewai.llms.base_llm import BaseLLM
from crewai.tools.base_tool import BaseTool, Tool

from stalwart.adapters.crewai._human import durable_approval, durable_prompt
from stalwart.adapters.crewai._model import _durable_acall, _durable_call
from stalwart.adapters.crewai._threads import MARK
from stalwart.adapters.crewai._tools import _durable_run, _native_tool_call, _routed_tool_run

if TYPE_CHECKING:
    from collections.abc import Callable

_install_lock = threading.Lock()


def _subclasses(cls: type) -> list[type]:
    seen: list[type] = []
    stack = [cls]
    while stack:
        subs: list[type] = stack.pop().__subclasses__()
        for sub in subs:
            if sub not in seen:
                seen.append(sub)
                stack.append(sub)
    return seen


def _wrap(
    cls: type, name: str, wrapper: Callable[[Callable[..., Any]], Callable[..., Any]]
) -> None:
    own = cls.__dict__.get(name)
    if (
        own is None
        or not callable(own)
        or getattr(own, MARK, False)
        or getattr(own, "__isabstractmethod__", False)
    ):
        return
    setattr(cls, name, wrapper(own))


def _wrap_model(cls: type) -> None:
    _wrap(cls, "call", _durable_call)
    _wrap(cls, "acall", _durable_acall)


def _wrap_tool(cls: type) -> None:
    _wrap(cls, "_run", _durable_run)


def _chain_init_subclass(base: type, wrap: Callable[[type], None]) -> None:
    """Wrap the subclasses of ``base`` created from now on too, as they are created."""
    original = base.__dict__["__init_subclass__"]
    if getattr(original, MARK, False):
        return

    def init_subclass(cls: type, /, **kwargs: Any) -> None:
        original.__func__(cls, **kwargs)  # CrewAI's own: registries, its retry wrapper
        wrap(cls)

    setattr(init_subclass, MARK, True)
    setattr(base, "__init_subclass__", classmethod(init_subclass))  # noqa: B010


_installed = False


def install() -> None:
    """Put the durable wrappers on CrewAI's model and tool classes, once per process.

    Classes already imported are wrapped now, later ones as they are defined (CrewAI
    imports provider classes lazily, a hierarchical crew's manager model at kickoff).
    Runners call it when they are created; calling it again does nothing.
    """
    global _installed
    with _install_lock:
        if _installed:
            return
        _wrap(AgentExecutor, "_execute_single_native_tool_call", _native_tool_call)
        _wrap(Tool, "run", _routed_tool_run)
        _wrap(ToolCallHookContext, "request_human_input", durable_approval)
        prompt = SyncHumanInputProvider.__dict__["_prompt_input"]
        if not getattr(prompt.__func__, MARK, False):
            # A static method (called as self._prompt_input(crew)): it stays one.
            wrapped = staticmethod(durable_prompt(prompt.__func__))
            setattr(SyncHumanInputProvider, "_prompt_input", wrapped)  # noqa: B010
        _chain_init_subclass(BaseLLM, _wrap_model)
        _chain_init_subclass(BaseTool, _wrap_tool)
        for cls in _subclasses(BaseLLM):
            _wrap_model(cls)
        for cls in _subclasses(BaseTool):
            _wrap_tool(cls)
        _installed = True
