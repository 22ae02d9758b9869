"""Start-up warm-up compiles every decode-kernel variant the model will use (no JIT mid-run):
each (sliding window, soft-cap) kind of the model's attention layers, at every split count."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pagedllm.layers.attention import Attention
from pagedllm.worker.warmup import attention_variants

pytest.importorskip("triton")


def _model(kinds: list[tuple[int | None, float | None]]) -> nn.Module:
    model = nn.Module()
    model.layers = nn.ModuleList(
        Attention(2, 16, 1, 0.25, i, sliding_window=w, logit_softcap=c)
        for i, (w, c) in enumerate(kinds)
    )
    return model


def test_gemma2_kinds_include_the_soft_capped_window_and_full_layers():
    gemma2 = _model([(4096, 50.0), (None, 50.0)] * 3)
    assert attention_variants(gemma2) == [(False, None), (False, 50.0), (True, 50.0)]
    llama = _model([(None, None)] * 2)
    assert attention_variants(llama) == [(False, None)]


def test_triton_warm_up_launches_each_variant_at_each_split(monkeypatch):
    from pagedllm.attention import triton_backend

    calls = []

    def record(query, kv_cache, tables, seq_lens, scale, num_splits, sliding_window, softcap,
               kv_scale=None):  # fmt: skip
        assert kv_scale is None  # a bf16/fp32 cache has no scales
        calls.append((sliding_window is not None, softcap, num_splits))

    monkeypatch.setattr(triton_backend, "paged_decode_attention", record)
    backend = triton_backend.TritonAttentionBackend(max_splits=4)
    kv_cache = torch.zeros(2, 3, 16, 1, 16)
    variants = attention_variants(_model([(8, 30.0), (None, 30.0)]))
    backend.warm_up(kv_cache, 2, torch.float32, variants)
    want = [(w, c, n) for w, c in variants for n in (1, 2, 4)]
    assert len(calls) == len(want) and set(calls) == set(want)
    assert (True, 30.0, 4) in calls  # the soft-capped window layers' widest split
