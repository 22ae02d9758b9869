"""Tests for layers/sampler.py: greedy, seeds, truncation, penalties, logprobs, bans."""

from __future__ import annotations

import math

import pytest
import torch

from pagedllm.layers.sampler import (
    Sampler,
    SamplingBatch,
    apply_bans_and_penalties,
    compute_prompt_logprobs,
    make_generator,
)
from pagedllm.sampling_params import SamplingParams


def _batch(
    params: list[SamplingParams],
    vocab: int,
    outputs: list[list[int]] | None = None,
    prompts: list[list[int]] | None = None,
    generators: list[torch.Generator | None] | None = None,
    banned: list[list[int]] | None = None,
) -> SamplingBatch:
    n = len(params)
    return SamplingBatch.build(
        params,
        outputs if outputs is not None else [[] for _ in range(n)],
        prompts if prompts is not None else [[] for _ in range(n)],
        generators if generators is not None else [None] * n,
        "cpu",
        vocab,
        banned_token_ids=banned,
    )


def _frequencies(tokens: torch.Tensor, vocab: int) -> torch.Tensor:
    return torch.bincount(tokens, minlength=vocab).float() / tokens.numel()


def test_greedy_is_argmax_and_skips_extra_work() -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, 100)
    batch = _batch([SamplingParams(temperature=0.0)] * 6, 100)
    assert batch.all_greedy and batch.output_counts is None and batch.seen_mask is None
    assert batch.max_num_logprobs is None and not batch.need_top_k
    out = Sampler()(logits, batch)
    assert out.token_ids.dtype == torch.int64
    assert torch.equal(out.token_ids, logits.argmax(-1))
    assert out.logprobs is None


def test_greedy_rows_in_mixed_batch_stay_argmax() -> None:
    torch.manual_seed(1)
    logits = torch.randn(8, 64)
    params = [SamplingParams(temperature=0.0 if i % 2 else 1.5, top_k=5) for i in range(8)]
    original = logits.clone()
    out = Sampler()(logits, _batch(params, 64))
    assert torch.equal(logits, original), "the sampler must not modify its input"
    assert torch.equal(out.token_ids[1::2], logits[1::2].argmax(-1))


def _run_seeded(row_logits: list[torch.Tensor], seed: int, others: int, position: int) -> list:
    """Sample several steps for one seeded row placed among `others` unrelated rows."""
    gen = make_generator(seed, "cpu")
    other_gens = [make_generator(1000 + i, "cpu") if i % 2 else None for i in range(others)]
    tokens = []
    for step, target in enumerate(row_logits):
        noise_rows = [torch.randn(target.shape[0]) * (step + 1) for _ in range(others)]
        rows = noise_rows[:position] + [target] + noise_rows[position:]
        params = [SamplingParams(temperature=0.9, top_p=0.95, top_k=40) for _ in rows]
        params[position] = SamplingParams(temperature=0.8, seed=seed, top_p=0.9)
        gens = other_gens[:position] + [gen] + other_gens[position:]
        out = Sampler()(torch.stack(rows), _batch(params, target.shape[0], generators=gens))
        tokens.append(int(out.token_ids[position]))
    return tokens


def test_seeded_sampling_is_reproducible_and_batch_independent() -> None:
    torch.manual_seed(2)
    steps = [torch.randn(500) * 0.5 for _ in range(8)]
    alone = _run_seeded(steps, seed=7, others=0, position=0)
    assert alone == _run_seeded(steps, seed=7, others=0, position=0)
    torch.manual_seed(99)  # a different global RNG state must not matter either
    assert alone == _run_seeded(steps, seed=7, others=5, position=3)
    assert alone == _run_seeded(steps, seed=7, others=2, position=2)
    # The seed does matter: a flat distribution over 500 tokens, 8 steps.
    assert alone != _run_seeded(steps, seed=8, others=0, position=0)


@pytest.mark.parametrize(
    "params",
    [SamplingParams(temperature=1.0, top_k=1), SamplingParams(temperature=2.0, top_p=1e-6)],
    ids=["top_k=1", "top_p=tiny"],
)
def test_truncation_to_one_token_equals_greedy(params: SamplingParams) -> None:
    torch.manual_seed(3)
    logits = torch.randn(200, 50)
    out = Sampler()(logits, _batch([params] * 200, 50))
    assert torch.equal(out.token_ids, logits.argmax(-1))


def test_temperature_sampling_matches_distribution() -> None:
    torch.manual_seed(4)
    vocab, n, temperature = 6, 40_000, 0.7
    base = torch.tensor([1.0, 0.5, 0.0, -0.5, -1.0, 2.0])
    expected = torch.softmax(base / temperature, -1)
    out = Sampler()(
        base.expand(n, vocab), _batch([SamplingParams(temperature=temperature)] * n, vocab)
    )
    freq = _frequencies(out.token_ids, vocab)
    # Chi-square with 5 degrees of freedom: 20.5 is the 0.999 quantile.
    chi2 = float((((freq - expected) * n) ** 2 / (expected * n)).sum())
    assert chi2 < 20.5, (freq, expected)
    # And a temperature that differs visibly would fail the same check.
    wrong = torch.softmax(base / 1.0, -1)
    assert float((((freq - wrong) * n) ** 2 / (wrong * n)).sum()) > 100


def test_seeded_rows_follow_the_distribution_too() -> None:
    vocab, n = 4, 4000
    base = torch.tensor([0.0, 1.0, 2.0, 0.5])
    gens = [make_generator(i, "cpu") for i in range(n)]
    params = [SamplingParams(temperature=1.0, seed=i) for i in range(n)]
    out = Sampler()(base.expand(n, vocab), _batch(params, vocab, generators=gens))
    freq = _frequencies(out.token_ids, vocab)
    assert torch.allclose(freq, torch.softmax(base, -1), atol=0.03)


def test_top_k_keeps_k_most_likely_with_renormalized_frequencies() -> None:
    torch.manual_seed(5)
    vocab, n = 8, 30_000
    base = torch.tensor([0.1, 2.0, -1.0, 1.5, 0.0, 1.0, -2.0, 0.3])
    # Mix a disabled-top_k row type in so the per-row k path is exercised.
    params = [SamplingParams(top_k=3)] * n + [SamplingParams(top_k=0)] * 10
    out = Sampler()(base.expand(n + 10, vocab), _batch(params, vocab))
    freq = _frequencies(out.token_ids[:n], vocab)
    keep = torch.tensor([1, 3, 5])
    expected = torch.zeros(vocab)
    expected[keep] = torch.softmax(base[keep], -1)
    assert torch.allclose(freq, expected, atol=0.015)


def test_top_p_keeps_smallest_set_reaching_p() -> None:
    torch.manual_seed(6)
    probs = torch.tensor([0.05, 0.5, 0.15, 0.3])
    n = 20_000
    out = Sampler()(probs.log().expand(n, 4), _batch([SamplingParams(top_p=0.7)] * n, 4))
    freq = _frequencies(out.token_ids, 4)
    assert freq[0] == 0 and freq[2] == 0  # 0.5 + 0.3 >= 0.7: tokens 1 and 3 only
    assert abs(float(freq[1]) - 0.5 / 0.8) < 0.015


def test_min_p_drops_tokens_below_fraction_of_max() -> None:
    torch.manual_seed(7)
    probs = torch.tensor([0.4, 0.25, 0.19, 0.16])
    n = 20_000
    out = Sampler()(probs.log().expand(n, 4), _batch([SamplingParams(min_p=0.5)] * n, 4))
    freq = _frequencies(out.token_ids, 4)
    # Threshold 0.5 * 0.4 = 0.2: tokens 2 and 3 go, 0 and 1 are renormalized.
    assert freq[2] == 0 and freq[3] == 0
    assert abs(float(freq[0]) - 0.4 / 0.65) < 0.015


def _reference_penalties(
    logits: list[float], prompt: list[int], output: list[int], p: SamplingParams
) -> list[float]:
    """Plain-Python restatement of HF repetition + OpenAI presence/frequency penalties."""
    result = list(logits)
    for token in set(prompt) | set(output):
        value = result[token]
        rep = p.repetition_penalty
        result[token] = value / rep if value > 0 else value * rep
    for token in set(output):
        count = output.count(token)
        result[token] -= p.frequency_penalty * count + p.presence_penalty
    return result


def test_penalties_match_hand_computed_reference() -> None:
    torch.manual_seed(8)
    vocab = 12
    logits = torch.randn(3, vocab) * 2
    params = [
        SamplingParams(repetition_penalty=1.3, presence_penalty=0.5, frequency_penalty=0.25),
        SamplingParams(temperature=0.0),  # no penalties on this row
        SamplingParams(presence_penalty=-1.0, frequency_penalty=1.5),
    ]
    prompts = [[2, 5, 5], [1, 2, 3], [4]]
    outputs = [[1, 1, 3, 5], [0, 0], [4, 4, 4, 7]]
    batch = _batch(params, vocab, outputs=outputs, prompts=prompts)
    got = apply_bans_and_penalties(logits, batch)
    for row in range(3):
        expected = _reference_penalties(
            logits[row].tolist(), prompts[row], outputs[row], params[row]
        )
        assert got[row].tolist() == pytest.approx(expected, abs=1e-5)
    # Greedy with penalties picks the argmax of the penalized logits.
    out = Sampler()(logits, batch)
    assert int(out.token_ids[1]) == int(logits[1].argmax())


def test_repetition_penalty_matches_transformers() -> None:
    from transformers import RepetitionPenaltyLogitsProcessor

    torch.manual_seed(9)
    vocab = 40
    logits = torch.randn(2, vocab) * 3
    prompts = [[3, 4, 5, 6], [10, 11]]
    outputs = [[7, 3, 30], [11, 12, 39]]
    params = [SamplingParams(repetition_penalty=1.7), SamplingParams(repetition_penalty=0.8)]
    got = apply_bans_and_penalties(logits, _batch(params, vocab, outputs=outputs, prompts=prompts))
    for row in range(2):
        ids = torch.tensor([prompts[row] + outputs[row]])
        hf = RepetitionPenaltyLogitsProcessor(params[row].repetition_penalty)(
            ids, logits[row : row + 1].clone()
        )
        assert torch.allclose(got[row], hf[0], atol=1e-6)


def test_logprobs_are_raw_log_softmax_with_ordered_top_k() -> None:
    torch.manual_seed(10)
    vocab = 30
    logits = torch.randn(4, vocab)
    params = [
        SamplingParams(temperature=0.0, logprobs=5),
        SamplingParams(temperature=0.5, logprobs=0, repetition_penalty=2.0),
        SamplingParams(temperature=0.0),  # did not ask
        SamplingParams(temperature=1.0, logprobs=3, top_k=2),
    ]
    out = Sampler()(logits, _batch(params, vocab, prompts=[[0], [1], [2], [3]]))
    assert out.logprobs is not None and out.logprobs[2] is None
    reference = torch.log_softmax(logits, -1)  # raw: before penalties and temperature
    assert out.sampled_logprobs is not None and out.sampled_ranks is not None
    for row in range(4):
        token = int(out.token_ids[row])
        assert out.sampled_logprobs[row] == pytest.approx(float(reference[row, token]), abs=1e-6)
        assert out.sampled_ranks[row] == int((reference[row] > reference[row, token]).sum()) + 1
    for row, k in ((0, 5), (1, 0), (3, 3)):
        entry = out.logprobs[row]
        token = int(out.token_ids[row])
        assert entry is not None
        top_ids = reference[row].topk(k).indices.tolist() if k else []
        assert list(entry)[:k] == top_ids
        values = [entry[i] for i in top_ids]
        assert values == sorted(values, reverse=True)
        for token_id, value in entry.items():
            assert value == pytest.approx(float(reference[row, token_id]), abs=1e-6)
        assert token in entry
        assert len(entry) == k + (token not in top_ids)
    assert out.sampled_ranks[0] == 1  # greedy picks the most likely token


def test_banned_tokens_are_never_sampled() -> None:
    torch.manual_seed(11)
    vocab, n = 10, 5000
    logits = torch.zeros(n, vocab)
    logits[:, 3] = 5.0  # by far the most likely
    banned = [[3, 4, 999] for _ in range(n)]  # out-of-range ids are ignored
    params = [SamplingParams(temperature=1.0)] * (n - 1) + [SamplingParams(temperature=0.0)]
    out = Sampler()(logits, _batch(params, vocab, banned=banned))
    assert not torch.isin(out.token_ids, torch.tensor([3, 4])).any()
    assert len(set(out.token_ids.tolist())) == vocab - 2
    # Only banned rows are affected.
    free = Sampler()(
        logits[:2], _batch([SamplingParams(temperature=0.0)] * 2, vocab, banned=[[3], []])
    )
    assert free.token_ids.tolist()[1] == 3 and free.token_ids.tolist()[0] != 3


def test_prompt_logprobs_match_log_softmax_across_chunks() -> None:
    torch.manual_seed(12)
    positions, vocab = 300, 20  # more than one internal chunk
    logits = torch.randn(positions, vocab)
    next_ids = torch.randint(0, vocab, (positions,))
    result = compute_prompt_logprobs(logits, next_ids.tolist(), 2)
    reference = torch.log_softmax(logits, -1)
    assert len(result) == positions
    for pos in (0, 255, 256, 299):
        entry = result[pos]
        token = int(next_ids[pos])
        assert entry[token] == pytest.approx(float(reference[pos, token]), abs=1e-6)
        top2 = reference[pos].topk(2).indices.tolist()
        assert list(entry)[:2] == top2
        assert len(entry) == 2 + (token not in top2)
    total = sum(math.exp(e[int(t)]) for e, t in zip(result, next_ids, strict=True))
    assert 0 < total < positions


def test_build_rejects_misaligned_lists() -> None:
    with pytest.raises(ValueError, match="align"):
        SamplingBatch.build([SamplingParams()], [], [[]], [None], "cpu", 10)
