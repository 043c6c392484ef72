"""LangGraph adapter: durable graph runs, and a Redis checkpointer linear in a run's length.

```python
from langgraph.prebuilt import create_react_agent
from stalwart.adapters.langgraph import DurableGraphRunner

graph = create_react_agent(model, [search, write_report])   # or any compiled graph
runner = DurableGraphRunner("research", graph)
config = {"configurable": {"thread_id": "customer-42"}}      # optional: memory across runs
result = await runner.run({"messages": [("user", "How is our market doing?")]}, config=config)
```

Serve it with ``stalwart worker <module>:<app>`` (``<module>:default_app`` unless
an ``app=`` was given). Needs the ``stalwart[langgraph]`` extra.

LangGraph keeps its own loop and its own resume logic. :class:`DurableGraphRunner` binds a
:class:`StalwartSaver` to each run (on the run's own thread, or the ``thread_id`` of its
``config``, which one run at a time holds) and invokes the graph with
``durability="sync"``: every finished task's writes and every superstep's checkpoint are in
Redis before the graph goes on, fenced by the run's epoch (a zombie worker's writes are
refused with :class:`~stalwart.LeaseLost`). A worker that takes a run over invokes the graph
again without input and LangGraph skips the stored tasks: nodes, model calls, and tool
calls (each tool call of ``create_react_agent`` is its own task), in
subgraphs and in ``@entrypoint``/``@task`` functions alike. A task cut off by the crash runs
again (at-least-once); work inside one node is not split further.

Journal: each stored task becomes a small step ``lg:<node>:<task id>`` (kind ``node``),
after one step ``lg:<node>:<task id>/model:<n>`` (kind ``model``, with the model's reported
token usage) per chat model call the task made,
which is what the run's ``step.completed`` events show and where cancel, drain and a lost
lease stop the graph; answers to ``interrupt()`` are steps ``lg:resume:<digest>`` (kind
``interrupt``). Subgraphs must not get a checkpointer of their own (the default inherits).

Streaming: ``runner.astream(input, stream_mode=...)`` is ``graph.astream`` for a durable run
(``values``, ``updates``, ``messages`` with token chunks, ``custom``; a list of modes;
``subgraphs``), resets yielded as :class:`~stalwart.adapters.StreamReset`; each task of a
streamed run streams from inside its own step (``_live``). ``conversation=`` is the thread.

:class:`StalwartSaver` also works on its own (``StalwartSaver.from_url(url)``, sync and
async, unfenced) and passes the ``langgraph-checkpoint-conformance`` suite, extended
capabilities included. It stores each channel version once and a list channel that grew
(``messages``) as its new elements only, so a thread's size is linear in its length.

Checkpoints are rebuilt only as allow-listed types (:class:`SafeSerializer`): LangGraph's
safe types, the types the graph's schemas declare, and ``allowed_types=`` (on the runner or
the saver). A checkpoint naming anything else fails with
:class:`~stalwart.errors.DisallowedTypeError`; nothing it names is imported or called.
"""

from stalwart.adapters.langgraph._model import KIND_MODEL
from stalwart.adapters.langgraph._runner import DurableGraphRunner
from stalwart.adapters.langgraph._saver import StalwartSaver, TaskWritten
from stalwart.adapters.langgraph._serde import SafeSerializer
from stalwart.adapters.langgraph._thread import ThreadBusy
from stalwart.adapters.langgraph._tools import (
    KIND_INTERRUPT,
    KIND_NODE,
    GraphInterrupted,
    InterruptHandler,
    to_builtins,
)

__all__ = [
    "KIND_INTERRUPT",
    "KIND_MODEL",
    "KIND_NODE",
    "DurableGraphRunner",
    "GraphInterrupted",
    "InterruptHandler",
    "SafeSerializer",
    "StalwartSaver",
    "TaskWritten",
    "ThreadBusy",
    "to_builtins",
]
