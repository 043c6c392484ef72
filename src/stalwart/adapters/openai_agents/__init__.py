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

Serve it with ``stalwart worker <module>:<app>`` (``<module>:default_app`` unless
an ``app=`` was given). Needs the ``stalwart[openai-agents]`` extra.

Step keys: ``model:<n>`` (n-th model call of its scope), ``tool:<tool_call_id>``,
``handoff:<n>``, ``guardrail:<name>``; an agent used as a tool runs its nested loop in the
scope ``tool:<tool_call_id>/``. A tool call that needs approval waits durably for the
signal ``approval:<tool_call_id>``.
"""

from stalwart.adapters.openai_agents._model import DurableModel, DurableModelProvider
from stalwart.adapters.openai_agents._runner import DurableAgentRunner, durable_run_config

__all__ = ["DurableAgentRunner", "DurableModel", "DurableModelProvider", "durable_run_config"]
