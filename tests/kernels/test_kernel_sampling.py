"""The one-pass Gumbel-max sampling kernel draws from softmax(logits / T), like the torch
sampler's exponential race, and the sampler takes it only for plain temperature sampling."""

from __future__ import annotations

import math

import pytest
import torch

from pagedllm.kernels.sampling import _BLOCK, gumbel_sample
from pagedllm.layers.sampler import Sampler, SamplingBatch
from pagedllm.sampling_params import SamplingParams


def _frequencies(tokens: torch.Tensor, vocab: int) -> torch.Tensor:
    return torch.bincount(tokens.cpu(), minlength=vocab).float() / tokens.numel()


@pytest.mark.parametrize("temperature", [0.6, 1.7])
def test_draws_follow_the_tempered_softmax(device, temperature):
    torch.manual_seed(0)
    # one draw per row; the interpreter runs ~100 programs/s, so fewer draws there
    vocab, rows = 12, 20000 if device.type == "cuda" else 800
    base = torch.randn(vocab) * 1.5
    logits = base.repeat(rows, 1).to(device=device, dtype=torch.bfloat16)
    inv_t = torch.full((rows,), 1.0 / temperature, device=device)
    seed = torch.tensor([1234], dtype=torch.int64, device=device)
    tokens = gumbel_sample(logits, inv_t, seed)
    assert tokens.shape == (rows,) and tokens.dtype == torch.int64
    want = torch.softmax(logits[0].float().cpu() / temperature, dim=-1)
    got = _frequencies(tokens, vocab)
    # each frequency within 4.5 standard deviations of its probability
    sd = (want * (1 - want) / rows).sqrt()
    assert torch.all((got - want).abs() <= 4.5 * sd + 1e-3), (got, want)


def test_same_seed_same_tokens_other_seed_other_tokens(device):
    logits = torch.zeros(64, 500, device=device)
    inv_t = torch.ones(64, device=device)
    a = gumbel_sample(logits, inv_t, torch.tensor([7], device=device))
    b = gumbel_sample(logits, inv_t, torch.tensor([7], device=device))
    c = gumbel_sample(logits, inv_t, torch.tensor([8], device=device))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_chunks_and_tails_cover_the_whole_vocabulary(device):
    # the winner sits in the last, partial block of a multi-chunk row; -inf is never drawn
    vocab = 4 * 4 * _BLOCK + 37
    logits = torch.full((4, vocab), float("-inf"), device=device)
    targets = [vocab - 1, 0, _BLOCK * 5 + 3, vocab - 38]
    for row, t in enumerate(targets):
        logits[row, t] = 0.0
    tokens = gumbel_sample(logits, torch.ones(4, device=device))
    assert tokens.tolist() == targets


def test_low_temperature_is_argmax(device):
    torch.manual_seed(1)
    logits = torch.randn(16, 3000, device=device) * 3
    tokens = gumbel_sample(logits, torch.full((16,), 1e4, device=device))
    assert torch.equal(tokens, logits.argmax(dim=-1))


def _batch(params: list[SamplingParams], device) -> SamplingBatch:
    n = len(params)
    generators = [
        torch.Generator(device=device).manual_seed(p.seed) if p.seed is not None else None
        for p in params
    ]
    return SamplingBatch.build(params, [[]] * n, [[1]] * n, generators, device, vocab_size=50)


def test_only_plain_temperature_batches_take_the_fused_path(device):
    plain = _batch([SamplingParams(temperature=0.7), SamplingParams(temperature=0.0)], device)
    assert plain.plain_temperature
    for other in (
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=0.7, top_k=5),
        SamplingParams(temperature=0.7, top_p=0.9),
        SamplingParams(temperature=0.7, min_p=0.1),
        SamplingParams(temperature=0.7, seed=3),
        SamplingParams(temperature=0.7, logprobs=2),
        SamplingParams(temperature=0.7, presence_penalty=0.5),
    ):
        assert not _batch([other], device).plain_temperature, other


def test_sampler_greedy_rows_stay_argmax_in_a_mixed_batch(device, monkeypatch):
    from pagedllm.layers import _fused

    monkeypatch.setattr(
        _fused, "use_fused", lambda x, kernel: True
    )  # the CUDA choice, on any device
    torch.manual_seed(2)
    logits = torch.randn(6, 50, device=device)
    params = [SamplingParams(temperature=0.0 if i % 2 else 0.9) for i in range(6)]
    out = Sampler()(logits, _batch(params, device)).token_ids
    greedy = logits.argmax(dim=-1)
    assert out[1::2].tolist() == greedy[1::2].tolist()
    assert all(0 <= t < 50 for t in out.tolist())
    assert not math.isnan(float(out.float().sum()))
