"""Strands' ``stream_async`` event dicts rebuilt on the client from a durable run's stream.

The worker publishes each model call's text deltas live (``model.delta`` chunks, not
journaled); everything else a caller's ``stream_async`` loop reads is rebuilt here from the
journaled steps (``StepDone``), so a live run, a run resumed on another worker and a late
attach all yield the same shapes:

- a text delta: ``{"data": text, "delta": {"text": text}, "stalwart": origin}`` (one per
  live chunk; a model call completed before the stream attached, or run with
  ``stream=False``, yields its whole text once); ``origin`` is ``{"step", "epoch",
  "attempt", "worker"}``, the model call and the attempt that streamed the text;
- a tool call the model asked for: ``{"type": "tool_use_stream", "delta": {"toolUse":
  {"input": json}}, "current_tool_use": {"toolUseId", "name", "input": json}}`` (once, with
  the whole input);
- each message the agent adds: ``{"message": {"role", "content"}}`` (the assistant's reply
  with its ``metadata`` (usage, metrics), then the user message holding the tool results);
- the end: ``{"result": DurableAgentResult}`` (a graph or swarm:
  ``{"type": "multiagent_result", "result": MultiAgentResult}``);
- a reset: ``{"stalwart_reset": StreamReset}``: the text shown for ``reset.step`` is void,
  the step's call runs again and streams from its start.

In a graph or swarm, a node's events come wrapped as Strands wraps them,
``{"type": "multiagent_node_stream", "node_id": ..., "event": <agent event>}``. The calls of
an agent used as a tool (keys under ``tool:<id>/``) are not forwarded. Not rebuilt: the raw
provider events (``{"event": ...}``), the loop's lifecycle markers (``init_event_loop``,
``start``, ``start_event_loop``) and the per-event ``agent`` / ``request_state`` objects,
which live in the worker.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from stalwart.adapters import StreamReset
from stalwart.client import Chunk, Reset, StepDone, StreamEnd

if TYPE_CHECKING:
    from collections.abc import Iterator

    from stalwart.client import StreamPart

RESET_KEY = "stalwart_reset"
"""The key of a reset event in the rebuilt stream (its value is a ``StreamReset``)."""

ORIGIN_KEY = "stalwart"
"""The key of a text delta's origin: ``{"step", "epoch", "attempt", "worker"}`` (the model
call's step key, and the attempt that streamed it; epoch, attempt and worker are None for
the whole text of a call that completed before the stream attached or streamed nothing)."""


def _split(step: str) -> tuple[str | None, str]:
    """``(node_id, local key)``: a graph or swarm node's prefix; None for the lone agent.

    Keys under ``tool:<id>/`` (an agent used as a tool) give node ``""``: not forwarded.
    """
    if "/" not in step:
        return None, step
    head, _, rest = step.partition("/")
    if head.startswith("tool:"):
        return "", rest
    return head, rest


class StrandsEvents:
    """Turns a run's stream parts into Strands ``stream_async`` event dicts, in order."""

    def __init__(self) -> None:
        # Tool results journaled since the last model call, per node ("" is unused): Strands
        # adds them as one user message before the next model call.
        self._pending: dict[str | None, list[dict[str, Any]]] = {}

    def feed(self, part: StreamPart) -> Iterator[dict[str, Any]]:
        """The events ``part`` stands for (none for parts Strands has no event for)."""
        if isinstance(part, Chunk):
            yield from self._chunk(part)
        elif isinstance(part, Reset):
            node, _ = _split(part.step)
            if node != "":
                yield from self._flush(node)  # the tool results came before the voided call
            reset = StreamReset(
                step=part.step, epoch=part.epoch, attempt=part.attempt, reason=part.reason
            )
            yield {RESET_KEY: reset}
        elif isinstance(part, StepDone):
            yield from self._done(part)
        elif isinstance(part, StreamEnd):
            for node in list(self._pending):
                yield from self._flush(node)

    def _chunk(self, part: Chunk) -> Iterator[dict[str, Any]]:
        node, _ = _split(part.step)
        if node == "" or part.type != "model.delta":
            return
        text = part.data.get("text") if isinstance(part.data, dict) else None
        if not isinstance(text, str) or not text:
            return
        yield from self._flush(node)
        origin = {
            "step": part.step,
            "epoch": part.epoch,
            "attempt": part.attempt,
            "worker": part.worker,
        }
        yield _wrap(node, {"data": text, "delta": {"text": text}, ORIGIN_KEY: origin})

    def _done(self, part: StepDone) -> Iterator[dict[str, Any]]:
        node, _ = _split(part.step)
        result = part.result
        if node == "" or not isinstance(result, dict):
            return
        if part.kind == "tool" and isinstance(result.get("result"), dict):
            self._pending.setdefault(node, []).append({"toolResult": result["result"]})
            return
        message = result.get("message")
        if part.kind != "model" or not isinstance(message, dict):
            return  # an interrupt or an overflow: no message was added
        yield from self._flush(node)
        blocks = [b for b in message.get("content") or [] if isinstance(b, dict)]
        if not part.streamed:
            text = "".join(str(b["text"]) for b in blocks if "text" in b)
            if text:
                origin = {"step": part.step, "epoch": None, "attempt": None, "worker": None}
                yield _wrap(node, {"data": text, "delta": {"text": text}, ORIGIN_KEY: origin})
        for block in blocks:
            use = block.get("toolUse")
            if isinstance(use, dict):
                # As Strands streams it: the input as the JSON text the model sent.
                raw = json.dumps(use.get("input") or {})
                current = {"toolUseId": use.get("toolUseId"), "name": use.get("name"), "input": raw}
                delta = {"toolUse": {"input": raw}}
                event = {"type": "tool_use_stream", "delta": delta, "current_tool_use": current}
                yield _wrap(node, event)
        added: dict[str, Any] = {"role": message.get("role"), "content": blocks}
        if "usage" in result or "metrics" in result:
            added["metadata"] = {"usage": result.get("usage"), "metrics": result.get("metrics")}
        yield _wrap(node, {"message": added})

    def _flush(self, node: str | None) -> Iterator[dict[str, Any]]:
        results = self._pending.pop(node, None)
        if results:
            yield _wrap(node, {"message": {"role": "user", "content": results}})


def _wrap(node: str | None, event: dict[str, Any]) -> dict[str, Any]:
    if node is None:
        return event
    return {"type": "multiagent_node_stream", "node_id": node, "event": event}
