"""LangChain's ChatOpenAI against the server: with_structured_output and bind_tools."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("llguidance")
langchain_openai = pytest.importorskip("langchain_openai")
pydantic = pytest.importorskip("pydantic")


class Person(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=12)
    age: int = pydantic.Field(ge=0, le=120)


def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"sunny in {city}"


@pytest.fixture(scope="module")
def chat(server):
    return langchain_openai.ChatOpenAI(
        model=server.model, base_url=server.base_url + "/v1", api_key=server.api_key,
        temperature=0, max_tokens=48, max_retries=0, timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize("method", ["json_schema", "json_mode"])
def test_with_structured_output(chat, method):
    structured = chat.with_structured_output(Person, method=method)
    prompt = "Describe a person as JSON with keys name and age."
    person = structured.invoke(prompt)
    assert isinstance(person, Person)


def test_bind_tools(chat):
    bound = chat.bind_tools([get_weather], tool_choice="get_weather")
    message = bound.invoke("What is the weather in Paris?")
    assert message.tool_calls and message.tool_calls[0]["name"] == "get_weather"
    assert isinstance(message.tool_calls[0]["args"]["city"], str)
    json.dumps(message.tool_calls[0]["args"])
