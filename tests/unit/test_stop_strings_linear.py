"""Stop strings: the automaton agrees with a brute-force scan, and per-token cost stays flat."""

from __future__ import annotations

import random
import time
from typing import Any

from pagedllm.engine.detokenizer import IncrementalDetokenizer
from pagedllm.engine.stop_matcher import StopMatcher
from pagedllm.sampling_params import SamplingParams


class _CharTokenizer:
    """Token i is the string vocab[i] (a stand-in for a tokenizers.Tokenizer)."""

    def __init__(self, vocab: list[str]) -> None:
        self.backend = self
        self.vocab = vocab

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(self.vocab[i] for i in ids)


def _brute_hold(text: str, stops: list[str]) -> int:
    best = 0
    for stop in stops:
        for length in range(1, min(len(stop) - 1, len(text)) + 1):
            if text.endswith(stop[:length]):
                best = max(best, length)
    return best


def test_matcher_agrees_with_brute_force() -> None:
    rng = random.Random(0)
    for _ in range(200):
        stops = ["".join(rng.choice("ab") for _ in range(rng.randint(1, 5))) for _ in range(3)]
        text = "".join(rng.choice("abc") for _ in range(30))
        matcher = StopMatcher(stops)
        state = 0
        for i, ch in enumerate(text):
            state, matches = matcher.scan(state, ch, i, collect=True)
            ends = {(m.start, m.end) for m in matches}
            want = {(i + 1 - len(s), i + 1) for s in stops if text[: i + 1].endswith(s)}
            assert ends == want
            assert matcher.held_back(state) == _brute_hold(text[: i + 1], stops)


def test_stop_hold_back_cost_is_flat_in_the_stop_length() -> None:
    """64 stop strings of 1,024 characters: the old scan re-checked every prefix of every stop
    on each token (tens of ms per token); the automaton does O(1) per character."""
    tok: Any = _CharTokenizer(["a", "b"])
    # every stop starts "a<x>a...": a tail of a's matches only the one-character prefix, so the
    # old scan tried each of the ~1,000 longer prefixes of each stop, on every token
    stops = ["a" + chr(ord("c") + i) + "a" * 1022 for i in range(64)]
    params = SamplingParams(stop=stops, max_tokens=4000)
    detok = IncrementalDetokenizer(tok, [], params)
    detok.add_tokens([0] * 1100)  # build the automaton, fill the tail with a long stop prefix
    start = time.perf_counter()
    for _ in range(300):
        delta, stop = detok.add_tokens([0])
        assert stop is None and delta == "a"  # the previous 'a' is released, the new one held
    per_token = (time.perf_counter() - start) / 300
    assert per_token < 1e-3, f"{per_token * 1e3:.2f} ms per token"
    assert detok.add_tokens([1]) == ("ab", None)  # 'b' breaks every candidate


def test_stop_string_count_and_length_are_bounded() -> None:
    import pytest

    with pytest.raises(ValueError, match="stop"):
        SamplingParams(stop=[f"s{i}" for i in range(1000)])
    with pytest.raises(ValueError, match="stop"):
        SamplingParams(stop=["x" * 4000])
