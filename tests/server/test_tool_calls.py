"""Tool calling through the official OpenAI client: forced, named, auto, and a round trip."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("llguidance")

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME = {
    "type": "object",
    "properties": {"timezone": {"type": "string", "maxLength": 20}},
    "required": ["timezone"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                      "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "description": "Time in a timezone",
                                      "parameters": TIME}},
]  # fmt: skip
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


def _create(client, server, messages=QUESTION, **kwargs):
    kwargs.setdefault("max_tokens", 80)
    return client.chat.completions.create(
        model=server.model, messages=messages, tools=TOOLS, temperature=0, **kwargs
    )


def _check_calls(calls, names=SCHEMAS):
    assert calls
    for call in calls:
        assert call.type == "function" and call.id
        assert call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_required_and_named_calls_validate(client, server):
    named_choice = {"type": "function", "function": {"name": "get_time"}}
    with ThreadPoolExecutor(2) as pool:  # one batch: concurrent requests
        required = pool.submit(
            _create, client, server, tool_choice="required", parallel_tool_calls=False
        )
        named = pool.submit(_create, client, server, tool_choice=named_choice)
        required, named = required.result(), named.result()
    choice = required.choices[0]
    assert choice.finish_reason == "tool_calls"
    _check_calls(choice.message.tool_calls)
    assert len(choice.message.tool_calls) == 1
    _check_calls(named.choices[0].message.tool_calls, names={"get_time"})
    # the tools reached the prompt
    plain = client.chat.completions.create(model=server.model, messages=QUESTION, max_tokens=1)
    assert required.usage.prompt_tokens > plain.usage.prompt_tokens + 50


def test_auto_parses_what_the_model_emits(client, server):
    answer = _create(client, server, tool_choice="auto", max_tokens=24)
    message = answer.choices[0].message
    for call in message.tool_calls or []:  # whatever the small model chose, it must parse
        assert call.function.name and json.loads(call.function.arguments) is not None
    assert (message.content or "").count("<tool_call>") == 0 or not message.tool_calls


def test_none_keeps_tools_out(client, server):
    none = _create(client, server, tool_choice="none", max_tokens=1)
    plain = client.chat.completions.create(model=server.model, messages=QUESTION, max_tokens=1)
    assert none.usage.prompt_tokens == plain.usage.prompt_tokens


def _stream_calls(client, server, messages, **kwargs):
    """Accumulate streamed tool_call deltas the way OpenAI clients do."""
    calls: dict[int, dict] = {}
    content, finish = "", None
    for chunk in _create(client, server, messages, stream=True, **kwargs):
        for choice in chunk.choices:
            content += choice.delta.content or ""
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or []:
                entry = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
                entry["id"] = delta.id or entry["id"]
                if delta.function is not None:
                    entry["name"] += delta.function.name or ""
                    entry["arguments"] += delta.function.arguments or ""
    return content, [calls[i] for i in sorted(calls)], finish


def test_round_trip_streamed_and_not(client, server):
    with ThreadPoolExecutor(2) as pool:  # both conversations share the batches
        for future in [pool.submit(_round_trip, client, server, s) for s in (False, True)]:
            future.result()


def _round_trip(client, server, stream):
    if stream:
        _, calls, finish = _stream_calls(
            client, server, QUESTION, tool_choice="required", parallel_tool_calls=False
        )
        assert finish == "tool_calls"
        calls = [
            {"id": c["id"], "type": "function",
             "function": {"name": c["name"], "arguments": c["arguments"]}}
            for c in calls
        ]  # fmt: skip
    else:
        first = _create(client, server, tool_choice="required", parallel_tool_calls=False)
        calls = [c.model_dump() for c in first.choices[0].message.tool_calls]
    for call in calls:
        jsonschema.validate(json.loads(call["function"]["arguments"]),
                            SCHEMAS[call["function"]["name"]])  # fmt: skip
    messages = QUESTION + [
        {"role": "assistant", "content": None, "tool_calls": calls},
        *({"role": "tool", "tool_call_id": c["id"], "content": "18 degrees, sunny"}
          for c in calls),
    ]  # fmt: skip
    if stream:
        content, more, finish = _stream_calls(client, server, messages, max_tokens=8)
    else:
        final = _create(client, server, messages, max_tokens=8).choices[0]
        content, more, finish = final.message.content, final.message.tool_calls, final.finish_reason
    assert finish in {"stop", "length", "tool_calls"}
    assert content or more


def test_tool_choice_errors(http, server):
    def post(**extra):
        body = {"model": server.model, "messages": QUESTION, "max_tokens": 4, **extra}
        return http.post("/v1/chat/completions", json=body)

    missing = post(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "tool_choice"
    no_tools = post(tool_choice="required")
    assert no_tools.status_code == 400
    bad_args = post(
        messages=QUESTION
        + [
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "f", "arguments": "{oops"},
                    }
                ],
            }
        ]
    )
    assert bad_args.status_code == 400  # fmt: skip
