"""AWS Strands Agents adapter: keep the agent as written, make every call a durable step.

```python
from strands import Agent
from stalwart.adapters.strands import DurableAgentRunner

def build() -> Agent:  # called once per run
    return Agent(model=..., tools=[search, fetch], system_prompt="...", callback_handler=None)

runner = DurableAgentRunner("research", build, max_iterations=10)
result = await runner.run("Analyze Q4 market trends")  # an AgentResult; or runner.submit(...)
later = await runner.run("And Q1?", messages=result.messages)  # the next turn
async for event in runner.stream_async("Analyze Q2", conversation="c-1"):  # Strands' events
    ...
```

Serve it with ``stalwart worker <module>:<app>`` (``<module>:default_app`` unless an
``app=`` was given). Needs the ``stalwart[strands]`` extra. A ``Graph`` or ``Swarm`` (or a
function building one) is served the same way.

Strands keeps its own loop. Every agent gets an ``InvokeModelStage`` and an
``ExecuteToolStage`` middleware handler that turn its calls into steps through
:meth:`stalwart.RunContext.call`.

Step keys: ``model:<n>`` (the n-th model call of an agent), ``tool:<toolUseId>`` (the id
comes from the journaled model response, so parallel calls are keyed by id, never by arrival
order; a hook-driven retry of the same call is ``tool:<toolUseId>#2``). The agent of a graph
or swarm node has its keys under ``<node_id>/`` (``writer/model:2``), so a resumed graph
replays its completed nodes from the journal and goes live at the node that was running
(Strands' own graph would start again from its entry points).

Tools: inside a tool, ``stalwart.current_step().idempotency_key`` is ``<run_id>:<step key>``,
the same on every attempt. ``@tool`` over ``@stalwart.durable(...)`` gives a tool its retry
policy, timeout, or at-most-once semantics (with a ``reconcile`` hook, called as
``reconcile(idempotency_key, **tool_input)``); an at-most-once tool found in flight after a
crash without a hook fails the run rather than hand the model an error it could retry. A tool
whose effect is only on in-process state (``agent.state``) belongs in ``local_tools``: it
runs again on replay instead of being journaled.

A lone agent's run takes Strands' per-call options (``messages=``, ``state=``,
``invocation_state=``, ``limits=``, ``structured_output_model=``...) and returns a
:class:`DurableAgentResult`, Strands' ``AgentResult`` plus the conversation after the run. A
Strands interrupt pauses the run durably: it publishes ``agent.interrupted`` and waits for the
signal ``interrupt:<id>`` (the answer); a run resumed after the answer asks nobody again. An
agent used as a tool has its calls journaled under ``tool:<toolUseId>/``.

Streaming: ``runner.stream_async(prompt, **options)`` (or ``attach_async(run_id)``) yields
Strands' ``stream_async`` event dicts for a durable run, rebuilt from its stream: live text
deltas from whichever worker runs the model call, tool-use, message and result events from
the journal, and ``{"stalwart_reset": StreamReset}`` where a dead attempt's text became void
(see ``_stream``). Conversations: ``conversation="id"`` on a run starts the agent from the
conversation's messages and appends the messages the run added (see ``_conversation``).

Not supported yet: interrupts in a graph or swarm, background tool tasks, and graph nodes
that are neither ``Agent``, ``Graph`` nor ``Swarm``.
"""

from stalwart.adapters.strands._result import DurableAgentResult
from stalwart.adapters.strands._runner import DurableAgentRunner, instrument
from stalwart.adapters.strands._scripted import ScriptedModel, reply, tool_call
from stalwart.adapters.strands._tools import ToolError

__all__ = [
    "DurableAgentResult",
    "DurableAgentRunner",
    "ScriptedModel",
    "ToolError",
    "instrument",
    "reply",
    "tool_call",
]
