"""prompt + max_tokens beyond max_model_len is a 400 naming the maximum context (as vLLM and
OpenAI answer), with OpenAI's code ``context_length_exceeded``; ``--truncate-max-tokens`` keeps
the old behaviour of cutting max_tokens to the room left."""

from __future__ import annotations

import contextlib

import pytest

MODEL = "smol"  # the served name (tests/server/conftest.py); importing conftest by name
# is ambiguous when several test folders run together


def _overflow_error(resp, max_len: int) -> dict:
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert f"maximum context length is {max_len} tokens" in error["message"]
    assert error["code"] == "context_length_exceeded"
    assert error["type"] == "invalid_request_error"
    return error


def test_prompt_plus_max_tokens_over_the_context_is_400(http, server, idle) -> None:
    n = server.max_model_len
    body = {"model": MODEL, "prompt": [1] * 20, "max_tokens": n - 19, "temperature": 0}
    error = _overflow_error(http.post("/v1/completions", json=body), n)
    assert f"requested {n + 1} tokens" in error["message"]
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": n}
    _overflow_error(http.post("/v1/chat/completions", json=chat), n)
    streamed = dict(body, stream=True)  # rejected before anything streams
    _overflow_error(http.post("/v1/completions", json=streamed), n)
    # exactly at the limit is fine
    ok = http.post("/v1/completions", json=dict(body, max_tokens=2))
    assert ok.status_code == 200, ok.text
    idle()


@contextlib.contextmanager
def _truncating(server):
    scheduler_config = server.engine.engine.config.scheduler
    scheduler_config.truncate_max_tokens = True
    try:
        yield
    finally:
        scheduler_config.truncate_max_tokens = False


def test_truncate_max_tokens_cuts_instead(http, server, idle) -> None:
    if not hasattr(server.engine.engine, "scheduler"):
        pytest.skip("the engine's config lives in the engine-core process")
    n = server.max_model_len
    body = {"model": MODEL, "prompt": [1] * (n - 3), "max_tokens": 50, "temperature": 0}
    with _truncating(server):
        resp = http.post("/v1/completions", json=dict(body, ignore_eos=True))
    assert resp.status_code == 200, resp.text
    choice = resp.json()["choices"][0]
    assert choice["finish_reason"] == "length"
    assert resp.json()["usage"]["completion_tokens"] == 3  # the room left in the context
    idle()
