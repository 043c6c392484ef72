"""Agents for the flow-control tests (``tests.flow_apps:app``), run in real worker processes.

Each model step is a real HTTP call to the loopback fake OpenAI server of the test
(``FAKE_LLM_URL``); the limits come from the environment, read when a worker imports this.
"""

from __future__ import annotations

import asyncio
import json
import os
import urllib.error
import urllib.request
from typing import Any

import msgspec

from stalwart import App, RunContext
from stalwart.actors import StepSpec, Usage
from stalwart.flow import RateLimit, SpendLimit

RATE_N = int(os.environ.get("FLOW_RATE_N", "10"))
RATE_PER = float(os.environ.get("FLOW_RATE_PER", "2.0"))
SPEND_USD = float(os.environ.get("FLOW_SPEND_USD", "0.001"))
RATE_HOLD = float(os.environ.get("FLOW_RATE_HOLD", "600"))


class Chat(msgspec.Struct):
    model: str = "fake-rpm"
    calls: int = 1
    tenant: str = "t1"


class ProviderError(Exception):
    """An HTTP error from the provider, shaped as ``policies.classify`` reads one."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"{status}: {text[:200]}")
        self.status_code = status


def _usage(value: Any) -> Usage | None:
    u = value.get("usage") if isinstance(value, dict) else None
    if not isinstance(u, dict):
        return None
    return Usage(str(value.get("model", "")), int(u["prompt_tokens"]), int(u["completion_tokens"]))


def _post(model: str, text: str) -> Any:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": text}]})
    req = urllib.request.Request(
        f"{os.environ['FAKE_LLM_URL']}/chat/completions",
        data=body.encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:
        raise ProviderError(exc.code, exc.read().decode(errors="replace")) from None


async def _complete(model: str, text: str) -> Any:
    # The standard library in a thread: no HTTP client dependency for the test suite.
    return await asyncio.to_thread(_post, model, text)


app = App(
    "flowtests",
    flow=[
        RateLimit(
            name="fake-rpm", resources="model:fake-*", requests=RATE_N, per=RATE_PER, hold=RATE_HOLD
        ),
        SpendLimit(
            name="spend",
            resources="model:gpt-4o*",
            limit_usd=SPEND_USD,
            scope="tenant",
            tenant=lambda inp: inp.tenant,
        ),
    ],
)


@app.agent("chat")
async def chat(ctx: RunContext, inp: Chat) -> int:
    tokens = 0
    for i in range(inp.calls):
        key = ctx.next_key("model")
        text = f"{ctx.run_id} call {i} " + "x" * 400
        spec = StepSpec(
            key=f"model:{key}",
            kind="model",
            name=inp.model,
            fp=str(i),
            usage=_usage,
            tokens_hint=len(text) // 4 + 100,  # the request's size, plus the reply's bound
        )
        reply = await ctx.call(spec, lambda text=text: _complete(inp.model, text))
        tokens += int(reply["usage"]["prompt_tokens"])
    return tokens


@app.agent("swallow")
async def swallow(ctx: RunContext, inp: Chat) -> str:
    """Agent code that swallows every exception of its model call, the flow wait's too."""
    try:
        await chat(ctx, inp)
    except Exception:
        return "swallowed"
    return "called"
