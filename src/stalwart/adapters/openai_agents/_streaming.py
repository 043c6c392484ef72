"""``DurableRunResultStreaming``: ``Runner.run_streamed``'s result, for a durable run.

The caller keeps the loop written for the SDK::

    result = runner.run_streamed("Analyze Q4")          # was: Runner.run_streamed(agent, ...)
    async for event in result.stream_events():
        if event.type == "raw_response_event" and isinstance(event.data, ResponseTextDeltaEvent):
            print(event.data.delta, end="")
    print(result.final_output)

The events are the SDK's own objects, rebuilt from the run's stream parts
(:mod:`._events`); the run itself is on the workers and survives their crashes. One event
type is added: :class:`~stalwart.adapters.StreamReset` (``event.type == "stalwart.reset"``),
yielded when text already yielded for a model call became void (its attempt died: a retry,
or a failover to another worker); the call's text then comes again from its first delta.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stalwart.adapters.openai_agents._events import EventRebuilder
from stalwart.client import StreamEnd

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from agents import Agent
    from agents.result import RunResult

    from stalwart.adapters.openai_agents._runner import DurableAgentRunner
    from stalwart.checkpoints import CancelOutcome
    from stalwart.client import RunHandle


class DurableRunResultStreaming:
    """What :meth:`DurableAgentRunner.run_streamed` returns: the SDK's streaming result shape.

    ``stream_events()`` submits the run (or attaches to it) on first use and yields the SDK's
    stream events, plus :class:`~stalwart.adapters.StreamReset` where a reset happens; after
    the last event, ``is_complete`` is True and ``final_output`` (and ``result``, the SDK's
    ``RunResult``, as :meth:`DurableAgentRunner.run` returns it) are set. A run that failed
    raises from ``stream_events()`` after its last event, as the SDK does (the SDK's own
    error type when it failed with one). ``current_agent`` follows handoffs as they are
    journaled. ``new_items``, ``raw_responses``, ``last_agent``, ``to_input_list()``... are
    the final ``RunResult``'s, once complete.
    """

    def __init__(
        self,
        runner: DurableAgentRunner,
        agent: Agent[Any],
        start: Callable[[], Awaitable[RunHandle]],
    ) -> None:
        self._runner = runner
        self._start = start
        self._rebuilder = EventRebuilder(agent)
        self.handle: RunHandle | None = None
        """The durable run (set when ``stream_events()`` starts)."""
        self.result: RunResult | None = None
        """The SDK's ``RunResult`` of the run, once it completed."""
        self.final_output: Any = None
        self.is_complete = False

    @property
    def run_id(self) -> str | None:
        """The durable run's id (None before ``stream_events()`` started it)."""
        return self.handle.run_id if self.handle is not None else None

    @property
    def current_agent(self) -> Agent[Any]:
        """The agent running now (the starting one until a handoff is journaled)."""
        if self.result is not None:
            last: Agent[Any] = self.result.last_agent
            return last
        return self._rebuilder.agent

    async def stream_events(self) -> AsyncIterator[Any]:
        """The run's stream events as the SDK yields them (see the class docs)."""
        if self.handle is not None:
            raise RuntimeError(
                "stream_events() was already called on this result; attach another consumer "
                "with DurableAgentRunner.attach_streamed(run_id)"
            )
        handle = self.handle = await self._start()
        async for part in self._runner.stream_handle(handle):
            for event in self._rebuilder.apply(part):
                yield event
            if isinstance(part, StreamEnd):
                break
        try:
            # The SDK's RunResult (or the SDK's own error), as run() gives it.
            self.result = await self._runner.result(handle)
        finally:
            self.is_complete = True
        self.final_output = self.result.final_output

    async def cancel(self, reason: str = "cancelled by client") -> CancelOutcome:
        """Cancel the durable run (the SDK's ``cancel()`` stops a local loop; this ends the run)."""
        if self.handle is None:
            raise RuntimeError("the run has not started: iterate stream_events() first")
        return await self.handle.cancel(reason)

    def __getattr__(self, name: str) -> Any:
        # The rest of RunResult's surface (new_items, to_input_list, last_agent...) once done.
        result = self.__dict__.get("result")
        if result is None or name.startswith("_"):
            raise AttributeError(
                f"{type(self).__name__}.{name} is available once the run completed "
                "(after stream_events() ended)"
                if not name.startswith("_")
                else name
            )
        return getattr(result, name)
