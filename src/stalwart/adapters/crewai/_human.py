"""Human feedback (``Task(human_input=True)``) in a durable run: a durable signal, not stdin.

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
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from crewai.context import get_current_task_id

from stalwart.adapters.crewai._threads import current_run, marked

if TYPE_CHECKING:
    from collections.abc import Callable

    from crewai.crew import Crew


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
