"""Bad requests get OpenAI-shaped 4xx errors and never disturb the server."""

from __future__ import annotations

import httpx
import pytest

MODEL = "smol"  # the served name (tests/server/conftest.py)

CHAT = [{"role": "user", "content": "Hi"}]


def _assert_error(resp: httpx.Response, status: int, *needles: str) -> dict:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    for needle in needles:
        assert needle in error["message"], error["message"]
    return error


def test_malformed_json_is_400(http) -> None:
    resp = http.post(
        "/v1/completions",
        content=b'{"model": "smol", "prompt": ',
        headers={"content-type": "application/json"},
    )
    _assert_error(resp, 400, "JSON")


@pytest.mark.parametrize(
    ("path", "body", "needle"),
    [
        ("/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": "many"}, "max_tokens"),
        ("/v1/completions", {"model": MODEL}, "prompt"),
        ("/v1/completions", {"model": MODEL, "prompt": {"a": 1}}, "prompt"),
        ("/v1/chat/completions", {"model": MODEL, "messages": "hi"}, "messages"),
        ("/v1/chat/completions", {"model": MODEL, "messages": []}, "messages"),
        (
            "/v1/chat/completions",
            {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]},
            "role",
        ),
        (
            "/v1/chat/completions",
            {"model": MODEL, "messages": CHAT, "temperature": "hot"},
            "temperature",
        ),
    ],
)
def test_wrong_types_are_400_not_422(http, path: str, body: dict, needle: str) -> None:
    _assert_error(http.post(path, json=body), 400, needle)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", -1),
        ("top_p", 1.5),
        ("n", 0),
        ("max_tokens", 0),
        ("logprobs", 50),
        ("presence_penalty", 3),
        ("top_k", -5),
        ("min_p", 2),
        ("repetition_penalty", 0),
    ],
)
def test_bad_sampling_values_are_400_with_the_field_named(http, field: str, value) -> None:
    body = {"model": MODEL, "prompt": "hi", field: value}
    _assert_error(http.post("/v1/completions", json=body), 400, field)


def test_prompt_errors_are_400(http, server) -> None:
    too_long = {"model": MODEL, "prompt": [1] * (server.max_model_len + 10), "max_tokens": 4}
    _assert_error(http.post("/v1/completions", json=too_long), 400, "max_model_len")
    long_chat = {"model": MODEL, "messages": [{"role": "user", "content": "word " * 2000}]}
    _assert_error(http.post("/v1/chat/completions", json=long_chat), 400, "max_model_len")
    _assert_error(http.post("/v1/completions", json={"model": MODEL, "prompt": ""}), 400)
    _assert_error(http.post("/v1/completions", json={"model": MODEL, "prompt": []}), 400)
    out_of_vocab = {"model": MODEL, "prompt": [10**7]}
    _assert_error(http.post("/v1/completions", json=out_of_vocab), 400, "vocab")
    # one bad prompt in a batch rejects the whole request (and queues nothing)
    batch = {"model": MODEL, "prompt": [[1, 2, 3], [10**7]]}
    _assert_error(http.post("/v1/completions", json=batch), 400)


def test_unknown_model_is_404(http) -> None:
    resp = http.post("/v1/completions", json={"model": "gpt-9", "prompt": "hi"})
    assert _assert_error(resp, 404, "gpt-9")["code"] == "model_not_found"
    resp = http.post("/v1/chat/completions", json={"model": "gpt-9", "messages": CHAT})
    _assert_error(resp, 404)


def test_api_key_is_required(server) -> None:
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 1}
    with httpx.Client(base_url=server.base_url, timeout=30) as raw:
        _assert_error(raw.post("/v1/completions", json=body), 401)
        wrong = {"Authorization": "Bearer nope"}
        _assert_error(raw.post("/v1/completions", json=body, headers=wrong), 401)
        _assert_error(raw.get("/v1/models"), 401)
        assert raw.get("/health").status_code == 200  # health stays open for probes


def test_body_size_limit_is_413(http, server) -> None:
    limit = server.max_body
    big = b'{"model": "smol", "prompt": "' + b"a" * (limit + 10) + b'"}'
    resp = http.post("/v1/completions", content=big, headers={"content-type": "application/json"})
    _assert_error(resp, 413)

    def chunks():  # no Content-Length: the limit must hold for streamed bodies too
        yield b'{"model": "smol", "prompt": "'
        for _ in range(20):
            yield b"a" * (limit // 10)
        yield b'"}'

    resp = http.post(
        "/v1/completions", content=chunks(), headers={"content-type": "application/json"}
    )
    _assert_error(resp, 413)


def test_unknown_route_is_404_in_openai_shape(http) -> None:
    _assert_error(http.get("/v1/nothing"), 404)


def test_server_healthy_after_bad_requests(http) -> None:
    for _ in range(3):
        http.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "temperature": -1})
    assert http.get("/health").status_code == 200
    resp = http.post(
        "/v1/completions",
        json={"model": MODEL, "prompt": "Hello", "max_tokens": 3, "temperature": 0},
    )
    assert resp.status_code == 200
    assert resp.json()["choices"][0]["text"]
