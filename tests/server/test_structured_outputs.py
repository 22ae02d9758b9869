"""Structured outputs, logit_bias and refused fields through the official OpenAI client."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import pytest

jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("llguidance")

NAME = {"type": "string", "maxLength": 16}
SCHEMAS = [
    {"type": "object", "properties": {"name": NAME, "age": {"type": "integer", "minimum": 0,
     "maximum": 120}}, "required": ["name", "age"], "additionalProperties": False},
    {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}},
     "required": ["color"], "additionalProperties": False},
    {"type": "object", "properties": {"tags": {"type": "array", "items": NAME, "minItems": 1,
     "maxItems": 3}}, "required": ["tags"], "additionalProperties": False},
    # multipleOf bounds the digits: an unbounded number lets a small model ramble "1.2500000..."
    {"type": "object", "properties": {"price": {"type": "number", "minimum": 0.5,
     "maximum": 99, "multipleOf": 0.01}}, "required": ["price"], "additionalProperties": False},
    {"type": "object", "properties": {"user": {"type": "object", "properties": {"id": {
     "type": "integer", "minimum": 1, "maximum": 9999}, "email": NAME}, "required": ["id",
     "email"], "additionalProperties": False}}, "required": ["user"],
     "additionalProperties": False},
    {"type": "object", "properties": {"ok": {"type": "boolean"}, "note": NAME},
     "required": ["ok"], "additionalProperties": False},
    {"type": "array", "items": {"type": "integer", "minimum": -5, "maximum": 5},
     "minItems": 2, "maxItems": 4},
    {"type": "object", "properties": {"points": {"type": "array", "items": {"type": "object",
     "properties": {"x": {"type": "integer", "minimum": 0, "maximum": 9}, "y": {"type":
     "integer", "minimum": 0, "maximum": 9}}, "required": ["x", "y"],
     "additionalProperties": False}, "minItems": 1, "maxItems": 2}}, "required": ["points"],
     "additionalProperties": False},
    {"type": "object", "properties": {"status": {"const": "done"}, "count": {"type":
     "integer", "exclusiveMinimum": 0, "maximum": 50}}, "required": ["status", "count"],
     "additionalProperties": False},
    {"type": "object", "properties": {"city": NAME, "zip": {"type": "string", "pattern":
     "^[0-9]{5}$"}, "temp": {"type": ["number", "null"]}}, "required": ["city", "zip",
     "temp"], "additionalProperties": False},
]  # fmt: skip


def _ask(client, model, content, max_tokens=80, **kwargs):
    kwargs.setdefault("temperature", 0)
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": content}], max_tokens=max_tokens,
        **kwargs,
    )  # fmt: skip


def test_ten_json_schemas_validate(client, server, idle):
    def one(i_schema):
        i, schema = i_schema
        fmt = {"type": "json_schema", "json_schema": {"name": f"s{i}", "schema": schema,
                                                       "strict": True}}  # fmt: skip
        return _ask(client, server.model, "Answer in JSON.", response_format=fmt)

    with ThreadPoolExecutor(len(SCHEMAS)) as pool:
        answers = list(pool.map(one, enumerate(SCHEMAS)))
    for schema, answer in zip(SCHEMAS, answers, strict=True):
        choice = answer.choices[0]
        assert choice.finish_reason == "stop", choice.message.content
        jsonschema.validate(json.loads(choice.message.content), schema)
    assert idle()["pagedllm:kv_cache_usage_perc"] == 0


def test_json_object_regex_choice_and_vllm_extras(client, server):
    obj = _ask(client, server.model, "Describe a cat.", response_format={"type": "json_object"})
    assert isinstance(json.loads(obj.choices[0].message.content), dict)
    date = _ask(client, server.model, "When?", max_tokens=20,
                extra_body={"guided_regex": r"[0-9]{4}-[0-9]{2}-[0-9]{2}"})  # fmt: skip
    assert re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", date.choices[0].message.content)
    pick = _ask(client, server.model, "Pick one.", max_tokens=10, n=3, temperature=1.0,
                extra_body={"structured_outputs": {"choice": ["yes", "no", "maybe"]}})  # fmt: skip
    assert {c.message.content for c in pick.choices} <= {"yes", "no", "maybe"}
    cmpl = client.completions.create(
        model=server.model, prompt="The answer is", max_tokens=10, temperature=0,
        extra_body={"guided_choice": ["alpha", "beta"]},
    )  # fmt: skip
    assert cmpl.choices[0].text in {"alpha", "beta"}
    gram = _ask(client, server.model, "Count.", max_tokens=20,
                extra_body={"guided_grammar": 'root ::= "one" | "two" | "three"'})  # fmt: skip
    assert gram.choices[0].message.content in {"one", "two", "three"}


def test_bad_constraints_are_400(http, server):
    def post(**extra):
        body = {"model": server.model, "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 4, **extra}  # fmt: skip
        return http.post("/v1/chat/completions", json=body)

    bad_regex = post(guided_regex="(unclosed")
    assert bad_regex.status_code == 400 and "regex" in bad_regex.json()["error"]["message"]
    two = post(guided_regex="a", guided_choice=["a"])
    assert two.status_code == 400 and "only one" in two.json()["error"]["message"]
    unknown = post(structured_outputs={"json": {}, "whitespace_pattern": " "})
    assert unknown.status_code == 400 and "whitespace_pattern" in unknown.text


@pytest.mark.parametrize("field", ["audio", "modalities", "functions", "prediction"])
def test_unsupported_fields_are_refused_by_name(http, server, field):
    body = {"model": server.model, "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 4, field: {"x": 1}}  # fmt: skip
    resp = http.post("/v1/chat/completions", json=body)
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == field
    ok = http.post("/v1/chat/completions", json={**body, field: None} | {"metadata": {"a": "b"}})
    assert ok.status_code == 400  # present even as null: still not implemented
    del body[field]
    assert http.post("/v1/chat/completions", json=body | {"metadata": {"a": "b"}}).is_success


def test_logit_bias(client, server, http):
    tok = server.engine.tokenizer
    plain = _ask(client, server.model, "Say hello.", max_tokens=8)
    first = tok.encode(plain.choices[0].message.content)[0]
    biased = _ask(client, server.model, "Say hello.", max_tokens=8, logit_bias={str(first): -100})
    assert first not in tok.encode(biased.choices[0].message.content)
    forced_id = tok.encode(" banana")[0]
    forced = _ask(client, server.model, "Say hello.", max_tokens=6, logit_bias={forced_id: 100})
    assert tok.encode(forced.choices[0].message.content) == [forced_id] * 6
    bad = http.post("/v1/chat/completions", json={
        "model": server.model, "messages": [{"role": "user", "content": "x"}],
        "logit_bias": {"99999999": 1}})  # fmt: skip
    assert bad.status_code == 400 and "logit_bias" in bad.json()["error"]["message"]
    out_of_range = http.post("/v1/completions", json={
        "model": server.model, "prompt": "x", "logit_bias": {"5": 101}})  # fmt: skip
    assert out_of_range.status_code == 400 and "logit_bias" in out_of_range.text


def test_best_of_refused_and_cached_tokens(client, server, http):
    resp = http.post("/v1/completions", json={"model": server.model, "prompt": "hi",
                                              "n": 1, "best_of": 3})  # fmt: skip
    assert resp.status_code == 400 and "best_of" in resp.json()["error"]["message"]
    long = "Tell me about the sea. " * 8
    _ask(client, server.model, long, max_tokens=2)
    again = _ask(client, server.model, long, max_tokens=2)
    details = again.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens >= 32
