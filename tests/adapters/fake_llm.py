"""A fake OpenAI-compatible server on loopback that logs every request it receives.

Fidelity tests point each framework's real OpenAI model class at it (``base_url=fake.url``),
run an agent plainly and then durably with SIGKILLs, and compare what the model was sent.
It serves the two APIs those classes speak: Chat Completions (``/v1/chat/completions``, plain
and streamed) and Responses (``/v1/responses``, plain and streamed).

Answers come from a script per model name, ``script(request) -> Reply``, which must decide
from the request alone (the process that sent the previous request may be dead, and the
plain and the durable run must get the same answers). Call ids and usage default to values
derived from the request, so the same request always gets the same reply.

``hold(match)`` keeps the first matching request in flight until released, which is how a
test kills a worker while a model call is in flight.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

__all__ = [
    "FakeLLM",
    "Hold",
    "Reply",
    "Request",
    "Script",
    "ToolCall",
    "comparable",
    "fake_llm",
]


@dataclass(frozen=True)
class ToolCall:
    """One tool call in a reply; ``id`` defaults to one derived from the request."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    id: str | None = None


@dataclass(frozen=True)
class Reply:
    """What the model answers: text and/or tool calls, with usage (derived when None)."""

    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    input_tokens: int | None = None
    output_tokens: int | None = None
    status: int = 200
    """Anything but 200 answers with an OpenAI-shaped error of that status."""


@dataclass(frozen=True)
class Request:
    """One request the server received."""

    path: str
    body: dict[str, Any]
    at: float

    @property
    def model(self) -> str:
        return str(self.body.get("model", ""))

    @property
    def streamed(self) -> bool:
        return bool(self.body.get("stream"))

    def messages(self) -> list[dict[str, Any]]:
        """The conversation as Chat Completions messages, whichever API was used.

        Responses input items are mapped: messages keep role and text, ``function_call``
        becomes an assistant message with ``tool_calls``, ``function_call_output`` a
        ``tool`` message; ``instructions`` becomes a leading system message.
        """
        if "messages" in self.body:
            return [m for m in self.body["messages"] if isinstance(m, dict)]
        out: list[dict[str, Any]] = []
        if self.body.get("instructions"):
            out.append({"role": "system", "content": self.body["instructions"]})
        items = self.body.get("input")
        if isinstance(items, str):
            return [*out, {"role": "user", "content": items}]
        for item in items or []:
            if not isinstance(item, dict):
                continue
            kind = item.get("type", "message")
            if kind == "message" or ("role" in item and kind not in _RESPONSES_TOOL_ITEMS):
                out.append({"role": item.get("role"), "content": _text(item.get("content"))})
            elif kind == "function_call":
                call = {"id": item.get("call_id"), "type": "function"}
                call["function"] = {"name": item.get("name"), "arguments": item.get("arguments")}
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
            elif kind == "function_call_output":
                out.append(
                    {
                        "role": "tool",
                        "tool_call_id": item.get("call_id"),
                        "content": _text(item.get("output")),
                    }
                )
        return out

    def system(self) -> str:
        """The system (or developer) prompt, "" when there is none."""
        return "\n".join(
            _text(m.get("content"))
            for m in self.messages()
            if m.get("role") in ("system", "developer")
        )

    def last_user_text(self) -> str:
        """The text of the last user message ("" when there is none)."""
        users = [m for m in self.messages() if m.get("role") == "user"]
        return _text(users[-1].get("content")) if users else ""

    def tool_results(self) -> list[str]:
        """The tool results in the conversation so far, in order."""
        return [_text(m.get("content")) for m in self.messages() if m.get("role") == "tool"]

    def tool_names(self) -> list[str]:
        """The names of the tools offered in this request."""
        names = []
        for tool in self.body.get("tools") or []:
            fn = tool.get("function", tool) if isinstance(tool, dict) else {}
            if isinstance(fn, dict) and fn.get("name"):
                names.append(str(fn["name"]))
        return names

    def turn(self) -> int:
        """How many assistant turns the conversation holds already."""
        return sum(1 for m in self.messages() if m.get("role") == "assistant")


_RESPONSES_TOOL_ITEMS = frozenset({"function_call", "function_call_output"})

Script = Callable[[Request], Reply]


def _text(content: Any) -> str:
    """Text of a message content: a string, or the text parts of a list of parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) if isinstance(p, dict) else str(p) for p in content)
    return json.dumps(content, sort_keys=True)


def _digest(*parts: Any) -> str:
    data = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(data).hexdigest()[:16]


# Fields that differ between two sends of the same logical request: ids the client makes up
# and the like. Everything else must be equal for "the model received the same request".
VOLATILE_KEYS = frozenset({"user", "metadata", "prompt_cache_key", "safety_identifier"})


def comparable(bodies: list[dict[str, Any]] | list[Request]) -> list[dict[str, Any]]:
    """Request bodies with client-made volatile fields removed, to compare two runs."""
    out = []
    for b in bodies:
        body = b.body if isinstance(b, Request) else b
        out.append({k: v for k, v in body.items() if k not in VOLATILE_KEYS})
    return out


class Hold:
    """The first request matching ``match`` waits in flight until :meth:`release`."""

    def __init__(self, match: Callable[[Request], bool]) -> None:
        self.match = match
        self.request: Request | None = None
        self._arrived = threading.Event()
        self._released = threading.Event()

    def take(self, request: Request) -> bool:
        """Whether this hold takes ``request`` (only the first match is held)."""
        if self._arrived.is_set() or not self.match(request):
            return False
        self.request = request
        self._arrived.set()
        return True

    def wait_released(self) -> None:
        # Bounded: a test that forgets to release must not hang the server's threads forever.
        self._released.wait(timeout=120)

    async def arrived(self, timeout: float = 30.0) -> Request:
        """Wait until the held request came in; returns it."""
        # A thread waits on the server's event, so the test's loop stays free meanwhile.
        if not await asyncio.to_thread(self._arrived.wait, timeout):
            raise TimeoutError("no request matched the hold")
        assert self.request is not None
        return self.request

    def release(self) -> None:
        """Let the held request be answered (a killed client no longer reads it)."""
        self._released.set()


class FakeLLM(http.server.ThreadingHTTPServer):
    """The server; use the :func:`fake_llm` fixture, or ``close()`` when done."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self._lock = threading.Lock()
        self._log: list[Request] = []
        self._scripts: dict[str, Script] = {}
        self._holds: list[Hold] = []
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """The base URL OpenAI clients take (``.../v1``)."""
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def route(self, model: str, script: Script) -> None:
        """Answer requests for ``model`` with ``script``."""
        with self._lock:
            self._scripts[model] = script

    def hold(self, match: Callable[[Request], bool]) -> Hold:
        """Hold the first request matching ``match`` in flight (see :class:`Hold`)."""
        hold = Hold(match)
        with self._lock:
            self._holds.append(hold)
        return hold

    def requests(self, model: str | None = None) -> list[Request]:
        """Every request received so far (for ``model`` only, if given), in arrival order."""
        with self._lock:
            return [r for r in self._log if model is None or r.model == model]

    def clear(self) -> None:
        """Forget the log (scripts and holds stay)."""
        with self._lock:
            self._log.clear()

    def close(self) -> None:
        """Stop serving; releases every hold first."""
        with self._lock:
            holds = list(self._holds)
        for hold in holds:
            hold.release()
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)

    def receive(self, request: Request) -> tuple[Hold | None, Script | None]:
        """Log ``request``; the hold that takes it and the script that answers it."""
        with self._lock:
            self._log.append(request)
            hold = next((h for h in self._holds if h.take(request)), None)
            return hold, self._scripts.get(request.model)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: FakeLLM
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            self._json(400, _error(400, "the body is not JSON"))
            return
        path = self.path.split("?", 1)[0]
        request = Request(path=path, body=body if isinstance(body, dict) else {}, at=time.time())
        hold, script = self.server.receive(request)
        if hold is not None:
            hold.wait_released()
        if script is None:
            self._json(404, _error(404, f"no script for model {request.model!r}"))
            return
        try:
            reply = script(request)
        except Exception as exc:  # a broken script is a test bug: say it loudly
            self._json(500, _error(500, f"script failed: {type(exc).__name__}: {exc}"))
            return
        if reply.status != 200:
            self._json(reply.status, _error(reply.status, reply.text or "scripted error"))
            return
        try:
            if path.endswith("/chat/completions"):
                self._chat(request, reply)
            elif path.endswith("/responses"):
                self._responses(request, reply)
            else:
                self._json(404, _error(404, f"unknown path {path}"))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client was killed while its request was held

    # -- Chat Completions ----------------------------------------------------------------

    def _chat(self, request: Request, reply: Reply) -> None:
        calls = _calls(request, reply)
        usage = _usage(request, reply)
        cid = f"chatcmpl-{_digest(request.body)}"
        finish = "tool_calls" if calls else "stop"
        chat_usage = {
            "prompt_tokens": usage[0],
            "completion_tokens": usage[1],
            "total_tokens": usage[0] + usage[1],
        }
        tool_calls = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
            }
            for c in calls
        ]
        if not request.streamed:
            message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
            if tool_calls:
                message["tool_calls"] = tool_calls
            self._json(
                200,
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": 0,
                    "model": request.model,
                    "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                    "usage": chat_usage,
                },
            )
            return

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            return {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": 0,
                "model": request.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            }

        events: list[dict[str, Any]] = [chunk({"role": "assistant", "content": ""})]
        for piece in _pieces(reply.text):
            events.append(chunk({"content": piece}))
        for i, call in enumerate(tool_calls):
            head = {"index": i, "id": call["id"], "type": "function"}
            head["function"] = {"name": call["function"]["name"], "arguments": ""}
            events.append(chunk({"tool_calls": [head]}))
            args = {"index": i, "function": {"arguments": call["function"]["arguments"]}}
            events.append(chunk({"tool_calls": [args]}))
        events.append(chunk({}, finish))
        options = request.body.get("stream_options") or {}
        if isinstance(options, dict) and options.get("include_usage"):
            last = chunk({})
            last["choices"] = []
            last["usage"] = chat_usage
            events.append(last)
        self._sse([(None, e) for e in events], done=True)

    # -- Responses -----------------------------------------------------------------------

    def _responses(self, request: Request, reply: Reply) -> None:
        calls = _calls(request, reply)
        usage = _usage(request, reply)
        rid = f"resp_{_digest(request.body)}"
        output: list[dict[str, Any]] = []
        if reply.text:
            output.append(
                {
                    "type": "message",
                    "id": f"msg_{_digest(rid, 'text')}",
                    "role": "assistant",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": reply.text, "annotations": []}],
                }
            )
        for call in calls:
            output.append(
                {
                    "type": "function_call",
                    "id": f"fc_{_digest(rid, call.id)}",
                    "call_id": call.id,
                    "name": call.name,
                    "arguments": json.dumps(call.arguments),
                    "status": "completed",
                }
            )
        response = {
            "id": rid,
            "object": "response",
            "created_at": 0,
            "model": request.model,
            "status": "completed",
            "output": output,
            "parallel_tool_calls": True,
            "tool_choice": request.body.get("tool_choice", "auto"),
            "tools": request.body.get("tools") or [],
            "error": None,
            "incomplete_details": None,
            "instructions": request.body.get("instructions"),
            "metadata": {},
            "usage": {
                "input_tokens": usage[0],
                "output_tokens": usage[1],
                "total_tokens": usage[0] + usage[1],
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens_details": {"reasoning_tokens": 0},
            },
        }
        if not request.streamed:
            self._json(200, response)
            return
        events: list[dict[str, Any]] = [
            {
                "type": "response.created",
                "response": {**response, "status": "in_progress", "output": [], "usage": None},
            }
        ]
        for index, item in enumerate(output):
            opening = {**item, "status": "in_progress"}
            if item["type"] == "message":
                opening["content"] = []
            else:
                opening["arguments"] = ""
            events.append(
                {"type": "response.output_item.added", "output_index": index, "item": opening}
            )
            if item["type"] == "message":
                part = {"type": "output_text", "text": "", "annotations": []}
                events.append(
                    {
                        "type": "response.content_part.added",
                        "item_id": item["id"],
                        "output_index": index,
                        "content_index": 0,
                        "part": part,
                    }
                )
                for piece in _pieces(reply.text):
                    events.append(
                        {
                            "type": "response.output_text.delta",
                            "item_id": item["id"],
                            "output_index": index,
                            "content_index": 0,
                            "delta": piece,
                            "logprobs": [],
                        }
                    )
                events.append(
                    {
                        "type": "response.output_text.done",
                        "item_id": item["id"],
                        "output_index": index,
                        "content_index": 0,
                        "text": reply.text,
                        "logprobs": [],
                    }
                )
                events.append(
                    {
                        "type": "response.content_part.done",
                        "item_id": item["id"],
                        "output_index": index,
                        "content_index": 0,
                        "part": item["content"][0],
                    }
                )
            else:
                events.append(
                    {
                        "type": "response.function_call_arguments.delta",
                        "item_id": item["id"],
                        "output_index": index,
                        "delta": item["arguments"],
                    }
                )
                events.append(
                    {
                        "type": "response.function_call_arguments.done",
                        "item_id": item["id"],
                        "output_index": index,
                        "name": item["name"],
                        "arguments": item["arguments"],
                    }
                )
            events.append(
                {"type": "response.output_item.done", "output_index": index, "item": item}
            )
        events.append({"type": "response.completed", "response": response})
        for n, event in enumerate(events):
            event["sequence_number"] = n
        self._sse([(e["type"], e) for e in events], done=False)

    # -- wire ------------------------------------------------------------------------------

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _sse(self, events: list[tuple[str | None, dict[str, Any]]], *, done: bool) -> None:
        lines = []
        for name, event in events:
            head = f"event: {name}\n" if name else ""
            lines.append(f"{head}data: {json.dumps(event)}\n\n")
        if done:
            lines.append("data: [DONE]\n\n")
        data = "".join(lines).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _calls(request: Request, reply: Reply) -> list[ToolCall]:
    """The reply's tool calls, each with an id (derived from the request when not given)."""
    return [
        call
        if call.id
        else ToolCall(call.name, call.arguments, f"call_{_digest(request.messages(), i)[:12]}")
        for i, call in enumerate(reply.tool_calls)
    ]


def _usage(request: Request, reply: Reply) -> tuple[int, int]:
    """Tokens: as scripted, else about one per four characters of what went each way."""
    sent = len(json.dumps(request.messages(), sort_keys=True)) // 4 + 1
    said = len(reply.text + "".join(json.dumps(c.arguments) for c in reply.tool_calls)) // 4 + 1
    return (
        reply.input_tokens if reply.input_tokens is not None else sent,
        reply.output_tokens if reply.output_tokens is not None else said,
    )


def _pieces(text: str) -> list[str]:
    """A text cut in a few deltas, as a model streams it."""
    if not text:
        return []
    size = max(len(text) // 3, 1)
    return [text[i : i + size] for i in range(0, len(text), size)]


def _error(status: int, message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "fake_error", "code": str(status)}}


@pytest.fixture
def fake_llm() -> Iterator[FakeLLM]:
    """A :class:`FakeLLM` for one test."""
    server = FakeLLM()
    try:
        yield server
    finally:
        server.close()
