"""``use_beam_search`` (vLLM's extra): n beams, one answer when the search ends; sampling-only
fields combined with it are 400s that name the field."""

from __future__ import annotations

import pytest

MODEL = "smol"  # the served name (tests/server/conftest.py)


def test_beam_search_completion_returns_n_ranked_beams(http) -> None:
    body = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 5,
            "n": 3, "use_beam_search": True, "temperature": 0}  # fmt: skip
    resp = http.post("/v1/completions", json=body)
    assert resp.status_code == 200, resp.text
    choices = resp.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2]
    texts = [c["text"] for c in choices]
    assert len(set(texts)) == 3, texts  # distinct beams
    assert all(c["finish_reason"] in ("stop", "length") for c in choices)
    assert resp.json()["usage"]["completion_tokens"] > 0


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"temperature": 0.7}, "temperature"),
        ({"top_p": 0.5}, "top_p"),
        ({"seed": 1}, "seed"),
        ({"best_of": 4}, "best_of"),
        ({"stream": True}, "stream"),
        ({"n": 0}, "beam_width"),
    ],
)
def test_beam_search_with_sampling_options_is_400(http, extra: dict, field: str) -> None:
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 3, "n": 2, "use_beam_search": True}
    resp = http.post("/v1/completions", json={**body, **extra})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert field in error["message"], error
