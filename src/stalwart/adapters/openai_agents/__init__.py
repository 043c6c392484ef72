"""OpenAI Agents SDK adapter: keep the agent as written, make every call a durable step.

```python
from agents import Agent
from stalwart.adapters.openai_agents import DurableAgentRunner

agent = Agent(name="research-analyst", instructions="...", tools=[search, analyze])
runner = DurableAgentRunner("market-research", agent, max_iterations=10)
result = await runner.run("Analyze Q4 market trends")  # the SDK's RunResult
```

Per run, as with ``Runner.run``: ``context=`` (plain data: a pydantic model, a dataclass or a
dict), ``agent=`` (where to start), ``session=``, ``max_turns=``. Each run has a context of its
own, whose state is journaled with every tool, handoff and guardrail step, so a resumed run
sees the context the crashed one had.

Streaming keeps the SDK's loop (``result.stream_events()``, ``result.final_output``)::

    result = runner.run_streamed("Analyze Q4 market trends", conversation="chat-42")
    async for event in result.stream_events():
        if event.type == "stalwart.reset":  # a model call's attempt died: drop its text
            ...
        elif event.type == "raw_response_event" and event.data.type == "response.output_text.delta":
            print(event.data.delta, end="")

``conversation=`` continues a durable conversation: each run of it sees the earlier turns
(the SDK's session protocol, :class:`StalwartSession`, over the run's conversation).

Serve it with ``stalwart worker <module>:<app>`` (``<module>:default_app`` unless
an ``app=`` was given). Needs the ``stalwart[openai-agents]`` extra.

Step keys: ``model:<n>`` (n-th model call of its scope), ``tool:<tool_call_id>``,
``handoff:<n>``, ``guardrail:<name>``; an agent used as a tool runs its nested loop in the
scope ``tool:<tool_call_id>/``. A tool call that needs approval journals an approval request
(``approval:<tool_call_id>``: the tool, the hash of its arguments, an expiry) and waits
durably for an approval bound to it on the signal ``approval:<tool_call_id>`` (see
:mod:`stalwart.approvals`; ``RunHandle.approve`` / ``reject``).
"""

from stalwart.adapters.openai_agents._events import StepRawResponsesStreamEvent
from stalwart.adapters.openai_agents._model import DurableModel, DurableModelProvider
from stalwart.adapters.openai_agents._runner import DurableAgentRunner, durable_run_config
from stalwart.adapters.openai_agents._session import SessionHistoryError, StalwartSession
from stalwart.adapters.openai_agents._streaming import DurableRunResultStreaming

__all__ = [
    "DurableAgentRunner",
    "DurableModel",
    "DurableModelProvider",
    "DurableRunResultStreaming",
    "SessionHistoryError",
    "StalwartSession",
    "StepRawResponsesStreamEvent",
    "durable_run_config",
]
