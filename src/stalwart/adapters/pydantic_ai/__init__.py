"""PydanticAI adapter: a Stalwart durability engine on ``pydantic_ai.durable_exec``.

```python
from pydantic_ai import Agent
from stalwart.adapters.pydantic_ai import DurableAgentRunner

agent = Agent("openai:gpt-4o", name="support", tools=[lookup_customer, refund])
runner = DurableAgentRunner("support", agent, max_iterations=10)
result = await runner.run("Where is my refund?", deps=..., message_history=...)
result.output, result.all_messages(), result.usage  # PydanticAI's own AgentRunResult
```

Serve it with ``stalwart worker <module>:<app>`` (``<module>:default_app`` unless
an ``app=`` was given). Needs the ``stalwart[pydantic-ai]`` extra.

PydanticAI keeps its own agent loop. :class:`StalwartDurability` is a
``BaseDurabilityCapability`` (the public base of PydanticAI's Temporal, DBOS and Prefect
engines) whose operation backend runs every model request, tool call, tool-argument
validator, toolset discovery and capability operation as a step through
:meth:`stalwart.RunContext.call`.

Step keys: ``model:<n>`` (the n-th model request of an agent run), ``tool:<tool_call_id>``
(the id comes from the journaled model response, so parallel calls are keyed by id, never by
arrival order), ``validate:<tool_call_id>``, ``tools:<toolset>:<n>``. An agent run from a
tool (delegation) whose agent carries :class:`StalwartDurability` runs in the scope
``tool:<tool_call_id>/<agent name>/``, so its steps replay inside the outer run.

Live events (not journaled, published from inside the live step only): ``model.part_start``,
``model.delta`` (text and argument chunks; ``data["text"]`` the answer text), ``model.part_end``,
``model.final_result`` when streaming, ``model.response`` (tool calls and text of a response),
``tool.call`` and ``tool.result``; each carries the step key and attempt.

PydanticAI's own streaming APIs work durably on the runner: ``async with
runner.run_stream(prompt) as result: async for text in result.stream_text(): ...``
(:class:`DurableStreamedRunResult`) and ``runner.run_stream_events(prompt)``
(:class:`DurableRunEvents`), with a :class:`~stalwart.adapters.StreamReset` where a model
call's streamed text became void (its worker died, or it is retried). ``conversation="c-1"``
on ``run``/``submit``/``run_stream`` continues a conversation: its earlier turns' messages are
the run's ``message_history``, its new messages are appended.

Code that runs outside steps runs again on every resume and must be deterministic: dynamic
instructions and system prompts, history processors, output validators and output
functions, hooks. A changed model, tool set, output type or instructions fails the resumed
run with a :class:`~stalwart.NonDeterminismError` that says what changed.
"""

from stalwart.adapters.pydantic_ai._capability import StalwartDurability
from stalwart.adapters.pydantic_ai._conversation import HistoryConflict
from stalwart.adapters.pydantic_ai._events import DurableRunEvents
from stalwart.adapters.pydantic_ai._request import AgentRequest, OutputNotSerializable
from stalwart.adapters.pydantic_ai._runner import DurableAgentRunner
from stalwart.adapters.pydantic_ai._stream import DurableStreamedRunResult
from stalwart.adapters.pydantic_ai._tools import ToolResultNotSerializable

__all__ = [
    "AgentRequest",
    "DurableAgentRunner",
    "DurableRunEvents",
    "DurableStreamedRunResult",
    "HistoryConflict",
    "OutputNotSerializable",
    "StalwartDurability",
    "ToolResultNotSerializable",
]
