"""The official openai client against the real server: completions and chat, streamed or not."""

from __future__ import annotations

import pytest

MODEL = "smol"  # the served name (tests/server/conftest.py)

CHAT = [{"role": "user", "content": "Name three colors."}]
PROMPT = "The capital of France is"


def _stream_text(stream) -> tuple[str, str | None]:
    text, finish = "", None
    for chunk in stream:
        for choice in chunk.choices:
            delta = getattr(choice, "delta", None)
            text += (delta.content if delta is not None else choice.text) or ""
            finish = choice.finish_reason or finish
    return text, finish


def test_models_lists_the_served_name(client) -> None:
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_completion_greedy_and_usage(client) -> None:
    resp = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0)
    choice = resp.choices[0]
    assert choice.text.strip()
    assert choice.finish_reason in ("length", "stop")
    assert resp.usage.prompt_tokens > 0
    assert 0 < resp.usage.completion_tokens <= 8
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    again = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0)
    assert again.choices[0].text == choice.text  # greedy is deterministic


def test_streamed_completion_equals_non_streamed(client) -> None:
    full = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0)
    stream = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0, stream=True
    )
    text, finish = _stream_text(stream)
    assert text == full.choices[0].text
    assert finish == full.choices[0].finish_reason


def test_streamed_chat_equals_non_streamed_with_usage(client) -> None:
    full = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=12, temperature=0)
    assert full.choices[0].message.role == "assistant"
    assert full.choices[0].message.content
    stream = client.chat.completions.create(
        model=MODEL,
        messages=CHAT,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens
    # the same chat again: its full prompt blocks come from the prefix cache
    cached = chunks[-1].usage.prompt_tokens_details.cached_tokens
    assert 16 <= cached < full.usage.prompt_tokens, (cached, full.usage)


def test_chat_content_parts_equal_plain_string(client) -> None:
    parts = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Name three "},
                {"type": "text", "text": "colors."},
            ],
        }
    ]
    a = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=6, temperature=0)
    b = client.chat.completions.create(model=MODEL, messages=parts, max_tokens=6, temperature=0)
    assert a.choices[0].message.content == b.choices[0].message.content


def test_n2_completion_and_chat(client) -> None:
    resp = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=6, temperature=1.0, n=2, seed=7
    )
    assert sorted(c.index for c in resp.choices) == [0, 1]
    assert all(c.text for c in resp.choices)
    chat = client.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=6, temperature=1.0, n=2, stream=True
    )
    seen: dict[int, str] = {}
    for chunk in chat:
        for choice in chunk.choices:
            seen[choice.index] = seen.get(choice.index, "") + (choice.delta.content or "")
    assert sorted(seen) == [0, 1] and all(seen.values())


def test_seed_makes_sampling_reproducible(client) -> None:
    kwargs = dict(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=1.0, seed=1234)
    assert (
        client.completions.create(**kwargs).choices[0].text
        == client.completions.create(**kwargs).choices[0].text
    )


def test_completion_logprobs_legacy_shape(client) -> None:
    resp = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=5, temperature=0, logprobs=2
    )
    lp = resp.choices[0].logprobs
    n = resp.usage.completion_tokens
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == n
    assert len(lp.text_offset) == n and lp.text_offset == sorted(lp.text_offset)
    assert "".join(lp.tokens) == resp.choices[0].text
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert logprob <= 0
        assert 1 <= len(top) <= 3
        # greedy: the chosen token is the most likely one
        assert max(top.values()) == pytest.approx(logprob, abs=1e-4)
        assert token in top


def test_chat_logprobs_shape(client) -> None:
    resp = client.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=5, temperature=0, logprobs=True, top_logprobs=3
    )
    content = resp.choices[0].logprobs.content
    assert len(content) == resp.usage.completion_tokens
    for item in content:
        assert item.logprob <= 0
        assert len(item.top_logprobs) == 3
        assert item.top_logprobs[0].logprob == pytest.approx(item.logprob, abs=1e-4)


def test_stop_string_cuts_the_text(client) -> None:
    full = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0)
    text = full.choices[0].text
    words = text.split()
    assert len(words) >= 3, text
    stop = words[2]
    expected = text[: text.index(stop)]
    for stream in (False, True):
        resp = client.completions.create(
            model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0, stop=[stop], stream=stream
        )
        got, finish = (
            _stream_text(resp) if stream else (resp.choices[0].text, resp.choices[0].finish_reason)
        )
        assert got == expected
        assert finish == "stop"


def test_token_id_prompts_and_batches(client, http) -> None:
    ids = http.post("/tokenize", json={"prompt": PROMPT}).json()["tokens"]
    by_text = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0)
    batch = client.completions.create(
        model=MODEL, prompt=[ids, ids[:-1]], max_tokens=6, temperature=0
    )
    assert sorted(c.index for c in batch.choices) == [0, 1]
    first = next(c for c in batch.choices if c.index == 0)
    assert first.text == by_text.choices[0].text
    single = client.completions.create(model=MODEL, prompt=ids, max_tokens=6, temperature=0)
    assert single.choices[0].text == by_text.choices[0].text


def test_echo_prepends_the_prompt(client) -> None:
    resp = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0, echo=True
    )
    plain = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0)
    assert resp.choices[0].text == PROMPT + plain.choices[0].text


def test_tokenize_detokenize_round_trip(http) -> None:
    tok = http.post("/tokenize", json={"prompt": "Hello world"}).json()
    assert tok["count"] == len(tok["tokens"]) > 0
    text = http.post("/detokenize", json={"tokens": tok["tokens"]}).json()["prompt"]
    assert text.endswith("Hello world")
    chat = http.post("/tokenize", json={"messages": CHAT}).json()
    assert chat["count"] > tok["count"]
