"""Human input in a durable run: a durable signal, not a read from the terminal.

Two places in CrewAI ask a human on the terminal: a task's feedback
(``Task(human_input=True)``) and a tool-call hook's ``context.request_human_input(...)`` (an
approval gate before or after a tool runs). Both become durable signals inside a run.

Feedback.
Without Stalwart, CrewAI's default human-input provider prints the agent's answer and reads
the reviewer's feedback from the terminal (``input()``); an empty answer accepts it, any
other text goes back to the agent, which answers again and asks again. A worker has no
terminal, and a run may move between workers while it waits. Inside a durable run each
prompt becomes a durable wait instead: the run publishes a ``crew.human_input`` event
(``signal``, ``task``, ``agent``, ``output``: the answer to review) and waits for the signal it
names (``human:<frame><n>``, e.g. ``human:task:1/1``); the signal's payload is the feedback
text ("" or None accepts). The answer is journaled: a resumed run is never asked twice, and
a long wait passivates the run like any durable wait. CrewAI's own loop around the prompt
(feedback rounds, training mode) is unchanged; training mode keeps reading the terminal.

Approvals. A before/after tool-call hook that calls ``context.request_human_input(prompt)``
publishes ``crew.human_input`` (``signal``, ``prompt``, ``tool``, ``arguments``, ``agent``,
``task``) and waits for ``human:<frame>approval:<call id>`` (``...:after`` from an after hook;
without a call id, the tool's name and a digest of its arguments), named by the tool call so
that parallel calls never take each other's answers. The answer is the text the hook gets.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from crewai.context import get_current_task_id

from stalwart.adapters.crewai._threads import _native_call, current_run, marked
from stalwart.kit import canonical_json, text_digest

if TYPE_CHECKING:
    from collections.abc import Callable

    from crewai.crew import Crew
    from crewai.hooks.tool_hooks import ToolCallHookContext


def _event(crew: Crew | None, signal: str, answer: str) -> dict[str, Any]:
    task_id = get_current_task_id()
    task = next((t for t in crew.tasks if str(t.id) == task_id), None) if crew else None
    agent = getattr(task, "agent", None) if task is not None else None
    return {
        "signal": signal,
        "task": task.description if task is not None else None,
        "agent": getattr(agent, "role", None),
        "output": answer,
    }


def durable_prompt(prompt: Callable[[Crew | None], str]) -> Callable[[Crew | None], str]:
    """Wrap CrewAI's ``_prompt_input(crew)``: a durable signal inside a run, else as it is."""

    @functools.wraps(prompt)
    def ask(crew: Crew | None) -> str:
        run = current_run()
        if run is None or (crew is not None and getattr(crew, "_train", False)):
            return prompt(crew)
        frame = run.frame()
        signal = f"human:{frame.path}{frame.next('human')}"
        answer = run.wait_for_signal(signal, _event(crew, signal, frame.answer))
        return "" if answer is None else str(answer)

    return marked(ask)


def durable_approval(ask: Callable[..., str]) -> Callable[..., str]:
    """Wrap ``ToolCallHookContext.request_human_input``: a durable signal inside a run."""

    @functools.wraps(ask)
    def request_human_input(
        self: ToolCallHookContext, prompt: str, *args: Any, **kwargs: Any
    ) -> str:
        run = current_run()
        if run is None:
            return ask(self, prompt, *args, **kwargs)
        native = _native_call.get()
        call = (
            native[0]
            if native is not None
            else f"{self.tool_name}:{text_digest(canonical_json(self.tool_input))}"
        )
        after = ":after" if self.tool_result is not None else ""
        frame = run.frame()
        signal = f"human:{frame.key(f'approval:{call}{after}')}"
        event = {
            "signal": signal,
            "prompt": prompt,
            "tool": self.tool_name,
            "arguments": self.tool_input,
            "agent": getattr(self.agent, "role", None),
            "task": getattr(self.task, "description", None),
        }
        answer = run.wait_for_signal(signal, event)
        return "" if answer is None else str(answer).strip()

    return marked(request_human_input)
