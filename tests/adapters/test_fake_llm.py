"""The fake OpenAI-compatible server, checked with the real ``openai`` client."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.adapters.fake_llm import FakeLLM, Reply, Request, ToolCall, comparable, fake_llm

openai = pytest.importorskip("openai")

__all__ = ["fake_llm"]


def weather(req: Request) -> Reply:
    if not req.tool_results():
        return Reply(tool_calls=(ToolCall("get_weather", {"city": "Paris"}),))
    return Reply(text=f"It is {req.tool_results()[-1]} in Paris.")


def client(fake: FakeLLM) -> Any:
    return openai.AsyncOpenAI(base_url=fake.url, api_key="sk-fake", max_retries=0)


async def test_chat_completions_plain_and_streamed_agree(fake_llm: FakeLLM) -> None:
    fake_llm.route("m", weather)
    api = client(fake_llm)
    messages: list[dict[str, Any]] = [{"role": "user", "content": "weather?"}]
    first = await api.chat.completions.create(model="m", messages=messages)
    call = first.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and first.choices[0].finish_reason == "tool_calls"
    messages += [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    second = await api.chat.completions.create(model="m", messages=messages)
    assert second.choices[0].message.content == "It is sunny in Paris."
    assert second.usage is not None and second.usage.prompt_tokens > first.usage.prompt_tokens

    stream = await api.chat.completions.create(
        model="m", messages=messages, stream=True, stream_options={"include_usage": True}
    )
    text, usage = "", None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        usage = chunk.usage or usage
    assert text == "It is sunny in Paris." and usage == second.usage
    again = await api.chat.completions.create(model="m", messages=messages[:1])
    assert again.choices[0].message.tool_calls[0].id == call.id  # same request, same id
    assert [r.path for r in fake_llm.requests()] == ["/v1/chat/completions"] * 4
    assert comparable(fake_llm.requests())[0] == {"model": "m", "messages": messages[:1]}
    await api.close()


async def test_responses_plain_and_streamed_agree(fake_llm: FakeLLM) -> None:
    fake_llm.route("m", weather)
    api = client(fake_llm)
    first = await api.responses.create(model="m", input="weather?", instructions="be brief")
    call = first.output[0]
    assert call.type == "function_call" and call.name == "get_weather"
    items: list[Any] = [
        {"role": "user", "content": "weather?"},
        {
            "type": "function_call",
            "call_id": call.call_id,
            "name": call.name,
            "arguments": call.arguments,
        },
        {"type": "function_call_output", "call_id": call.call_id, "output": "rainy"},
    ]
    second = await api.responses.create(model="m", input=items)
    assert second.output_text == "It is rainy in Paris."
    stream = await api.responses.create(model="m", input=items, stream=True)
    deltas, completed = [], None
    async for event in stream:
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
        if event.type == "response.completed":
            completed = event.response
    assert "".join(deltas) == "It is rainy in Paris."
    assert completed is not None and completed.usage == second.usage
    assert fake_llm.requests()[0].system() == "be brief"
    await api.close()


async def test_a_held_request_waits_until_released(fake_llm: FakeLLM) -> None:
    fake_llm.route("m", lambda req: Reply(text="late"))
    hold = fake_llm.hold(lambda req: req.last_user_text() == "wait")
    api = client(fake_llm)
    call = asyncio.ensure_future(
        api.chat.completions.create(model="m", messages=[{"role": "user", "content": "wait"}])
    )
    held = await hold.arrived()
    assert held.last_user_text() == "wait" and not call.done()
    quick = await api.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "wait"}]
    )  # only the first match is held
    assert quick.choices[0].message.content == "late" and not call.done()
    hold.release()
    assert (await call).choices[0].message.content == "late"
    await api.close()


async def test_errors_are_openai_shaped(fake_llm: FakeLLM) -> None:
    fake_llm.route("m", lambda req: Reply(text="slow down", status=429))
    api = client(fake_llm)
    with pytest.raises(openai.RateLimitError, match="slow down"):
        await api.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.NotFoundError, match="no script"):
        await api.chat.completions.create(model="x", messages=[{"role": "user", "content": "x"}])
    await api.close()
