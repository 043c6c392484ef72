"""CrewAI adapter: keep the crew as written, make every model and tool call a durable step.

```python
from crewai import Agent, Crew, Process, Task
from stalwart.adapters.crewai import DurableCrewRunner

crew = Crew(agents=[researcher, writer], tasks=[research, report], process=Process.sequential)
runner = DurableCrewRunner("market-research", crew)  # or a function that builds the crew
output = await runner.run(inputs={"topic": "Q4 market trends"})  # CrewAI's CrewOutput
```

Serve it with ``stalwart worker <module>:<app>`` (``<module>:default_app`` unless an
``app=`` was given). Needs the ``stalwart[crewai]`` extra, in an environment of its own:
CrewAI pins ``openai<3`` and ``pydantic<2.13``, which the OpenAI Agents SDK cannot share. Turn
CrewAI's telemetry off where you do not want it (``CREWAI_DISABLE_TELEMETRY=true``,
``OTEL_SDK_DISABLED=true``, ``CREWAI_TRACING_ENABLED=false``).

CrewAI keeps its own process (sequential or hierarchical), delegation and agent loop. The
adapter wraps ``BaseLLM.call`` / ``acall`` and ``BaseTool._run`` on their classes (inert
outside a durable run) so that every model and tool call is a step through
:meth:`stalwart.RunContext.call`. The kickoff runs in a thread; CrewAI calls models and tools
from its own threads (one per parallel native tool call), and each call is handed to the
worker's event loop and back, so the loop stays free for lease renewal.

Step keys, under the task they belong to (``task:<i>/``, the i-th task of the crew; none for
``DurableAgentRunner``): ``model:<n>`` (the n-th model call of that task, whichever agent makes
it: its agent, a hierarchical manager, a guardrail), ``tool:<call id>`` (the native tool call's
id, from the journaled model response, so parallel calls are keyed by id and never by thread
timing), or ``tool:<name>:<digest of the arguments>`` for text (ReAct) tool calling. Calls made
inside a tool step are keyed under it: a coworker that a delegation tool asks is
``task:1/tool:call_7/model:1``, ``task:1/tool:call_7/tool:call_9``. A crew that dies in the
middle of a delegation resumes inside it, at the coworker's first call that had not completed.

Semantics and limits:

- Model requests are fingerprinted (model, conversation, tools offered, output type); a
  resumed crew that asks something else fails with ``NonDeterminismError``. Keep what shapes
  prompts deterministic (``inject_date`` changes at midnight).
- Tools run at least once (a call in flight when the worker died runs again): hand
  ``current_step().idempotency_key`` to APIs that deduplicate, or mark a tool at-most-once by
  name with ``Policies(at_most_once=...)``. A tool that raises is not retried unless a retry
  policy asks for it; the error CrewAI gets is :class:`ToolCallFailed`, named as the tool's
  own exception, so CrewAI shows the model and records the same as without Stalwart.
- A delegation replayed whole brings back the tokens its coworker used and the tool failures
  it recorded, so ``CrewOutput.token_usage`` and ``tool_failures`` are the plain run's.
- ``Task(human_input=True)``: each prompt is a durable signal (``crew.human_input`` event,
  signal ``human:<frame><n>``), not a read from the terminal; see ``_human``.
- Runners return CrewAI's own ``CrewOutput`` / ``LiteAgentOutput``, rebuilt from the plain
  :class:`CrewResult` / :class:`AgentResult` a worker returns; ``run(inputs={...})`` is
  ``kickoff(inputs=...)``.
- Only model calls, tool calls and human feedback are journaled: CrewAI memory and
  knowledge, task callbacks and output files run again on a resume.
- Streaming: a ``Crew(stream=True)`` (or ``stream=True`` on the runner) makes the agents'
  models stream; each chunk is published live from its model step (CrewAI's
  ``LLMStreamChunkEvent``, not journaled). ``await runner.kickoff_streaming(inputs=...)``
  returns CrewAI's ``CrewStreamingOutput`` of the durable run: ``StreamChunk``s, a
  :class:`~stalwart.adapters.StreamReset` where a dead attempt's chunks became void, and
  ``.result``; see ``_stream``.
- Conversations: ``run(..., conversation="id")`` continues a conversation as CrewAI's crew
  chat does (the history as the ``crew_chat_messages`` input); see ``_conversation``.
- Runs use the sync ``kickoff`` (in a thread); ``akickoff`` is not supported. A crew
  that runs one agent object twice at once (parallel delegations to the same coworker) races
  in CrewAI itself and may not replay.
"""

from stalwart.adapters.crewai._install import install
from stalwart.adapters.crewai._results import AgentResult, CrewResult, TaskResult, crew_result
from stalwart.adapters.crewai._runner import DurableAgentRunner, DurableCrewRunner
from stalwart.adapters.crewai._scripted import ScriptedLLM, text, tool_call, tool_results
from stalwart.adapters.crewai._stream import DurableCrewStreamingOutput, DurableStreamChunk
from stalwart.kit import ToolCallFailed

__all__ = [
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
]
