"""``run_stream`` through Stalwart: PydanticAI's streamed-result surface over a durable run.

The worker runs the agent's own loop (``agent.run``) with every model request streamed inside
its step; each chunk reaches the client as a run-stream part (:meth:`RunHandle.stream`), tagged
with its step, epoch and attempt. :class:`DurableStreamedRunResult` turns those parts back into
what ``agent.run_stream`` gives: ``stream_text``, ``stream_output``, ``stream_response``,
``get_output``, ``usage``, ``all_messages`` ... When an attempt of a model step dies (a crash,
a retry) the stream says so before the next attempt's chunks (a ``Reset`` part): the text of
that step starts again, so a consumer shows the final text exactly once.

Text shown is the text of the run's top-level model responses (a delegated agent's steps,
keyed ``tool:<id>/<agent>/...``, are not the answer). A chunk missed by a late subscriber is
filled in from the journaled response when its step completes.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from pydantic import BaseModel
from pydantic_ai.exceptions import UserError
from pydantic_ai.messages import (
    ModelMessagesTypeAdapter,
    ModelResponse,
    ModelResponsePart,
    TextPart,
    ThinkingPart,
    ToolCallPart,
)
from pydantic_ai.usage import RunUsage

from stalwart.adapters import StreamReset
from stalwart.adapters.pydantic_ai._request import adapter, output_type_of
from stalwart.client import Chunk, Reset, StreamEnd
from stalwart.client import StepDone as PartDone

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from datetime import datetime

    from pydantic_ai.messages import ModelMessage
    from pydantic_ai.run import AgentRunResult

    from stalwart.client import RunHandle, StreamPart

OutputT = TypeVar("OutputT")


@dataclass
class _Part:
    """One part (by index) of a model response as its chunks built it."""

    kind: str
    content: str = ""
    tool_name: str = ""


@dataclass
class _Step:
    """A top-level model step as the client saw it: its parts and the text shown."""

    parts: dict[int, _Part] = field(default_factory=dict)
    final_tool: str | None = None
    """The output tool the model's final result streams through (``model.final_result``)."""

    @property
    def text(self) -> str:
        return "".join(p.content for _, p in sorted(self.parts.items()) if p.kind == "text")


@dataclass(frozen=True)
class _Text:
    step: str
    delta: str


@dataclass(frozen=True)
class _Void:
    step: str
    reset: StreamReset


@dataclass(frozen=True)
class _Args:
    """Tool-call arguments (or thinking) of ``step`` grew: no text, a structured output may."""

    step: str


_Update = _Text | _Void | _Args


def _top_level(step: str) -> bool:
    # A delegated agent's steps live under the tool step that ran it: `tool:<id>/<agent>/...`.
    return "/" not in step


def _journaled_parts(record: Any) -> list[dict[str, Any]]:
    response = record.get("response") if isinstance(record, dict) else None
    parts = response.get("parts") if isinstance(response, dict) else None
    return [p for p in parts or [] if isinstance(p, dict)]


class DurableStreamedRunResult(Generic[OutputT]):
    """PydanticAI's ``StreamedRunResult`` for a durable run (what ``run_stream`` yields).

    The same methods and properties as ``agent.run_stream``'s result: :meth:`stream_text`,
    :meth:`stream_output`, :meth:`stream_response`, :meth:`get_output`, :attr:`usage`,
    :meth:`all_messages`, :meth:`new_messages`, :attr:`result`, :attr:`is_complete`. Text
    streams from the model calls as the worker makes them; the output, messages and usage
    come from the run's result (PydanticAI's own ``AgentRunResult``) once the run ends, so
    :meth:`all_messages` and :attr:`usage` are complete after the stream is consumed.

    ``debounce_by`` is accepted for the same signatures and not applied: chunks are yielded
    as they arrive. :attr:`resets` lists every reset the stream saw; :attr:`handle` is the
    run's handle (leaving the ``async with`` block early stops following the run, it does
    not cancel it: ``await result.handle.cancel()`` does).
    """

    def __init__(self, runner: Any, handle: RunHandle, parts: AsyncIterator[StreamPart]) -> None:
        self._runner = runner
        self.handle = handle
        self._parts = parts
        self._steps: dict[str, _Step] = {}
        self._current: str | None = None
        self._run_result: AgentRunResult[OutputT] | None = None
        self.resets: list[StreamReset] = []
        """Every reset the stream saw, in order (shown text of its step was voided)."""
        self.is_complete = False
        """Whether the run ended and its result was received."""

    # -- the stream ------------------------------------------------------------------------

    async def _updates(self) -> AsyncIterator[_Update]:
        """Text deltas and resets of top-level model steps, until the run's end."""
        async for part in self._parts:
            if isinstance(part, Chunk):
                for update in self._chunk(part):
                    yield update
            elif isinstance(part, Reset):
                void = self._reset(part)
                if void is not None:
                    yield void
            elif isinstance(part, PartDone):
                for update in self._done(part):
                    yield update
            elif isinstance(part, StreamEnd):
                await self._end(part)
                return
        if not self.is_complete:  # the parts ended without an end part: ask the run
            await self._settle()

    def _chunk(self, chunk: Chunk) -> list[_Update]:
        if not _top_level(chunk.step) or not isinstance(chunk.data, dict):
            return []
        step = self._steps.setdefault(chunk.step, _Step())
        data = chunk.data
        if chunk.type == "model.part_start":
            part = data.get("part") or {}
            kind = str(part.get("part_kind", "")).replace("-", "_")
            step.parts[int(data.get("index", 0))] = _Part(kind, "", part.get("tool_name") or "")
        elif chunk.type == "model.final_result":
            step.final_tool = data.get("tool_name")
        elif chunk.type == "model.delta":
            index = int(data.get("index", 0))
            kind = str(data.get("type", "text"))
            built = step.parts.setdefault(index, _Part(kind))
            built.content += str(data.get("delta") or "")
            if data.get("tool_name"):
                built.tool_name += str(data["tool_name"])
            if text := data.get("text"):
                self._current = chunk.step
                return [_Text(chunk.step, str(text))]
            return [_Args(chunk.step)]
        return []

    def _reset(self, part: Reset) -> _Void | None:
        reset = StreamReset(
            step=part.step, epoch=part.epoch, attempt=part.attempt, reason=part.reason
        )
        self.resets.append(reset)
        step = self._steps.pop(part.step, None)
        if step is None or not step.text:
            return None  # nothing of it was shown
        return _Void(part.step, reset)

    def _done(self, part: PartDone) -> list[_Update]:
        if part.kind != "model" or not _top_level(part.step):
            return []
        # The journaled response is the truth: fill in text a late subscriber (or a lost
        # event) missed, or replace text that differs.
        parts = _journaled_parts(part.result)
        if not parts:
            return []  # no response in the record: keep what streamed
        journaled = "".join(
            str(p.get("content") or "") for p in parts if p.get("part_kind") == "text"
        )
        step = self._steps.get(part.step)
        shown = step.text if step is not None else ""
        rebuilt = _Step(
            {
                i: _Part(
                    str(p.get("part_kind", "")).replace("-", "_"),
                    _content(p),
                    str(p.get("tool_name") or ""),
                )
                for i, p in enumerate(parts)
            },
            step.final_tool if step is not None else None,
        )
        self._steps[part.step] = rebuilt
        if shown == journaled:
            return []
        self._current = part.step
        if journaled.startswith(shown):
            return [_Text(part.step, journaled[len(shown) :])]
        reset = StreamReset(step=part.step, epoch=0, attempt=0, reason="journal")
        self.resets.append(reset)
        return [_Void(part.step, reset), _Text(part.step, journaled)]

    async def _end(self, part: StreamEnd) -> None:
        if part.status == "completed":
            self._run_result = self._runner.decode_result(part.result)
            self.is_complete = True
        else:
            await self._settle()

    async def _settle(self) -> None:
        # The run's own outcome, as handle.result() gives it: the run's error if it failed.
        self._run_result = self._runner.decode_result(await self.handle.result())
        self.is_complete = True

    async def _drain(self) -> None:
        async for _ in self._updates():
            pass

    def _text_of_current(self) -> str:
        step = self._steps.get(self._current) if self._current is not None else None
        return step.text if step is not None else ""

    # -- PydanticAI's methods ---------------------------------------------------------------

    async def stream_text(
        self, *, delta: bool = False, debounce_by: float | None = 0.1
    ) -> AsyncIterator[Any]:
        """The answer text as it streams: the text so far (``delta=False``) or each chunk.

        ``delta=False`` yields the whole text of the current model response each time; after
        a reset it starts again from the new attempt's first chunk (an empty string marks
        the reset), and the last value is the run's output. ``delta=True`` yields each chunk
        and, where shown text became void, a :class:`~stalwart.adapters.StreamReset`: the
        loop drops what it showed of ``reset.step`` (the chunks yielded since the reset are
        that step's text again), e.g. ``if isinstance(d, StreamReset): shown = ""``.
        """
        self._check_text()
        if self.is_complete:
            yield self._final_text()
            return
        last: str | None = None
        async for update in self._updates():
            if isinstance(update, _Args):
                continue
            if delta:
                yield update.reset if isinstance(update, _Void) else update.delta
                continue
            if isinstance(update, _Void) and update.step != self._current:
                continue
            text = "" if isinstance(update, _Void) else self._text_of_current()
            if text != last:
                last = text
                yield text
        if not delta and self._final_text() != last:
            yield self._final_text()

    async def stream_output(self, *, debounce_by: float | None = 0.1) -> AsyncIterator[OutputT]:
        """The output as it streams, validated in partial mode; the last is the run's output.

        Text output: the text so far, as :meth:`stream_text`. A structured output (a pydantic
        model or dataclass) is validated from the output tool's arguments so far.
        """
        output_type = output_type_of(self._runner.template().output_type)
        structured = isinstance(output_type, type) and (
            issubclass(output_type, BaseModel) or dataclasses.is_dataclass(output_type)
        )
        last: Any = None  # OutputT: partial outputs, or the text so far for text output
        if not self.is_complete:
            async for update in self._updates():
                value = (
                    self._partial(update.step, output_type)
                    if structured
                    else (None if isinstance(update, _Void) else self._text_of_current())
                )
                if value is not None and value != last:
                    last = value
                    yield cast("OutputT", value)
        yield self._settled().output

    def _partial(self, step_key: str, output_type: Any) -> Any:
        step = self._steps.get(step_key)
        if step is None or step.final_tool is None:
            return None  # the output tool's call has not started
        for part in step.parts.values():
            if part.kind == "tool_call" and part.tool_name == step.final_tool:
                try:
                    return adapter(output_type).validate_json(
                        part.content or "{}", experimental_allow_partial="trailing-strings"
                    )
                except ValueError:
                    return None
        return None

    async def stream_response(
        self, *, debounce_by: float | None = 0.1
    ) -> AsyncIterator[ModelResponse]:
        """``ModelResponse`` snapshots of the model response streaming now; last the final one."""
        if not self.is_complete:
            async for update in self._updates():
                step = self._steps.get(update.step)
                if step is not None and not isinstance(update, _Void):
                    yield ModelResponse(
                        parts=[_response_part(p) for _, p in sorted(step.parts.items())],
                        state="incomplete",
                    )
        yield self._settled().response

    async def get_output(self) -> OutputT:
        """Wait for the run's end and return its output (the agent's output type)."""
        if not self.is_complete:
            await self._drain()
        return self._settled().output

    # -- the settled run --------------------------------------------------------------------

    def _settled(self) -> AgentRunResult[OutputT]:
        if self._run_result is None:
            raise UserError(
                "The run is still streaming, so it has no settled result yet. Await "
                "`stream_output()`, `stream_text()`, `stream_response()` or `get_output()` first."
            )
        return self._run_result

    def _final_text(self) -> str:
        output = self._settled().output
        return output if isinstance(output, str) else self._text_of_current()

    def _check_text(self) -> None:
        output_type = output_type_of(self._runner.template().output_type)
        if isinstance(output_type, type) and output_type is not str:
            raise UserError("stream_text() can only be used with text responses")

    @property
    def result(self) -> AgentRunResult[OutputT]:
        """The run's ``AgentRunResult`` once the stream has finished."""
        return self._settled()

    def all_messages(self, *, output_tool_return_content: str | None = None) -> list[ModelMessage]:
        """The run's messages (``message_history`` and the new ones), once it ended."""
        return self._settled().all_messages(output_tool_return_content=output_tool_return_content)

    def all_messages_json(self, *, output_tool_return_content: str | None = None) -> bytes:
        """:meth:`all_messages` as JSON bytes."""
        return ModelMessagesTypeAdapter.dump_json(
            self.all_messages(output_tool_return_content=output_tool_return_content)
        )

    def new_messages(self, *, output_tool_return_content: str | None = None) -> list[ModelMessage]:
        """The messages this run added, once it ended."""
        return self._settled().new_messages(output_tool_return_content=output_tool_return_content)

    def new_messages_json(self, *, output_tool_return_content: str | None = None) -> bytes:
        """:meth:`new_messages` as JSON bytes."""
        return ModelMessagesTypeAdapter.dump_json(
            self.new_messages(output_tool_return_content=output_tool_return_content)
        )

    @property
    def response(self) -> ModelResponse:
        """The last model response of the run."""
        return self._settled().response

    @property
    def usage(self) -> RunUsage:
        """The run's usage; complete once the run ended (empty before)."""
        return self._run_result.usage if self._run_result is not None else RunUsage()

    @property
    def timestamp(self) -> datetime:
        """The timestamp of the last model response."""
        return self._settled().timestamp

    @property
    def run_id(self) -> str:
        """The Stalwart run id, which is also PydanticAI's ``run_id`` of the agent run."""
        return self.handle.run_id

    @property
    def conversation_id(self) -> str:
        """PydanticAI's conversation id of the run (the Stalwart conversation id, if any)."""
        return self._settled().conversation_id

    @property
    def metadata(self) -> dict[str, Any] | None:
        """The run's metadata, once it ended."""
        return self._settled().metadata


def _content(part: dict[str, Any]) -> str:
    if part.get("part_kind") == "tool-call":
        args = part.get("args")
        return args if isinstance(args, str) else json.dumps(args)
    return str(part.get("content") or "")


def _response_part(part: _Part) -> ModelResponsePart:
    if part.kind == "thinking":
        return ThinkingPart(part.content)
    if part.kind == "tool_call":
        return ToolCallPart(part.tool_name, part.content or None)
    return TextPart(part.content)
