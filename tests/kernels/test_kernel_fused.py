"""Fused RMSNorm / RoPE (+ Qwen3 q/k norm) / SiLU-and-mul kernels against the torch layers.

The torch layers are the reference: the kernels round wherever torch rounds (every bf16 op
result), so they match them bit for bit except where a float32 intermediate is computed
differently:

- RMSNorm: ``1/rms`` can be 1 float32 ulp off (another reduction order for the sum of
  squares; numpy's ``1/sqrt`` here, torch's CPU ``rsqrt`` is not always that). float32 outputs
  are then ~1e-7 relative off; in bf16 it flips a rounding now and then: the normalized value
  by 1 ulp, so the output (normalized * weight, rounded again) by at most 2 ulps, on a small
  fraction of the elements. The residual sum is exact.
- Qwen3 q/k norm + RoPE: such a flip then goes through the rotation, whose subtraction can
  cancel, so there the bound is absolute (a couple of ulps of the operands), again rare.
- SiLU: ``exp`` is numpy's here (CUDA's ``expf`` on a GPU, as torch's), so float32 can be an
  ulp or two off torch's CPU result and bf16 at most 1 ulp, rarely.
- RoPE alone: exact in both dtypes (each product and sum is rounded exactly like torch's).

On an H200 against torch's CUDA ops the same tests pass; there RoPE, SiLU-and-mul and the q/k
norm + RoPE matched exactly on a Qwen3-0.6B decode batch, and RMSNorm in all but 8 of 245,760
bf16 values.

On CPU these run in the Triton interpreter, whose own float32 -> bf16 casts are wrong (it
truncates); the kernels round bf16 on the float32 bits there (``kernels/_rounding.py``), so
the bf16 results here are the real round-to-nearest-even, not an upcast approximation.
"""

from __future__ import annotations

import types

import pytest
import torch
from fused_utils import assert_matches, torch_path
from fused_utils import qkv_slices as _qkv
from fused_utils import randn as _randn

from pagedllm.attention.metadata import ForwardContext, set_forward_context
from pagedllm.attention.torch_backend import TorchAttentionBackend
from pagedllm.kernels.activation import silu_and_mul
from pagedllm.kernels.fused_norm import rms_norm
from pagedllm.kernels.rotary import apply_rotary, qk_norm_rotary
from pagedllm.layers import _fused
from pagedllm.layers.activation import SiluAndMul
from pagedllm.layers.rmsnorm import RMSNorm
from pagedllm.layers.rotary import RotaryEmbedding

DTYPES = [torch.float32, torch.bfloat16]
MAX_POS = 4096


def _norm_layer(gen, size: int, dtype: torch.dtype, device) -> RMSNorm:
    layer = RMSNorm(size, 1e-6, dtype, device)
    layer.weight.data = _randn(gen, size, scale=0.3, shift=1.0).to(dtype).to(device)
    return layer


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [64, 96, 1024])  # 96: a masked row tail
@pytest.mark.parametrize("tokens", [1, 7, 33])
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm_matches_layer(device, dtype, hidden, tokens, with_residual) -> None:
    gen = torch.Generator().manual_seed(hidden + tokens)
    layer = _norm_layer(gen, hidden, dtype, device)
    x = _randn(gen, tokens, hidden, scale=3.0).to(dtype).to(device)
    residual = _randn(gen, tokens, hidden).to(dtype).to(device) if with_residual else None

    with torch_path():
        expected, expected_sum = layer(x, residual)
    if residual is None:
        normed = rms_norm(x, layer.weight, layer.eps)
    else:
        normed, summed = rms_norm(x, layer.weight, layer.eps, residual)
        assert_matches(summed, expected_sum)  # one rounding, same as torch's add
    assert_matches(normed, expected, max_ulps=2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,head_dim", [(2, 64), (16, 128)])
def test_rms_norm_per_head_on_qkv_slice(device, dtype, heads, head_dim) -> None:
    """Qwen3's q_norm: rows are the heads of a strided [T, heads, head_dim] view; out= works."""
    gen = torch.Generator().manual_seed(heads)
    tokens = 7
    layer = _norm_layer(gen, head_dim, dtype, device)
    _, q, _, _ = _qkv(gen, tokens, heads, 1, head_dim, dtype, device)
    q3 = q.view(tokens, heads, head_dim)
    assert not q3.is_contiguous()
    out = torch.empty(tokens, heads, head_dim, dtype=dtype, device=device)
    with torch_path():
        expected = layer.normalize(q3)

    result = rms_norm(q3, layer.weight, layer.eps, out=out)

    assert result is out
    assert_matches(out, expected, max_ulps=2)


def test_rms_norm_promotes_to_weight_dtype(device) -> None:
    """A float32 weight on bf16 activations gives float32 output, as ``weight * x`` does."""
    gen = torch.Generator().manual_seed(3)
    x = _randn(gen, 5, 64).to(torch.bfloat16).to(device)
    layer = _norm_layer(gen, 64, torch.float32, device)
    with torch_path():
        expected = layer.normalize(x)
    assert expected.dtype == torch.float32
    assert_matches(rms_norm(x, layer.weight, layer.eps), expected, max_ulps=2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "heads,kv_heads,head_dim,tokens",
    [(2, 2, 64, 1), (4, 2, 64, 33), (3, 1, 64, 7), (16, 8, 128, 7), (2, 1, 80, 7)],
)  # 3 heads: a masked head block; head_dim 80: a masked half (40 of 64 lanes)
def test_rotary_matches_layer(device, dtype, heads, kv_heads, head_dim, tokens) -> None:
    gen = torch.Generator().manual_seed(heads * tokens)
    rope = RotaryEmbedding(head_dim, MAX_POS, base=1e6, device=device)
    _, q, k, _ = _qkv(gen, tokens, heads, kv_heads, head_dim, dtype, device)
    positions = torch.randint(0, MAX_POS, (tokens,), generator=gen).to(device)

    with torch_path():
        expected_q, expected_k = rope(positions, q, k)
    out_q, out_k = apply_rotary(positions, q, k, rope.cos_cache, rope.sin_cache, head_dim)

    assert out_q.is_contiguous() and out_k.is_contiguous()
    assert_matches(out_q, expected_q)
    assert_matches(out_k, expected_k)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_in_place_leaves_v(device, dtype) -> None:
    """In place on the qkv slices (int32 positions): q and k rotated, v untouched."""
    gen = torch.Generator().manual_seed(5)
    tokens, heads, kv_heads, head_dim = 7, 4, 2, 64
    rope = RotaryEmbedding(head_dim, MAX_POS, device=device)
    qkv, q, k, v = _qkv(gen, tokens, heads, kv_heads, head_dim, dtype, device)
    positions = torch.randint(0, MAX_POS, (tokens,), generator=gen, dtype=torch.int32)
    positions = positions.to(device)
    with torch_path():
        expected_q, expected_k = rope(positions.long(), q, k)
    v_before = v.clone()

    out_q, out_k = apply_rotary(
        positions, q, k, rope.cos_cache, rope.sin_cache, head_dim, inplace=True
    )

    assert out_q.data_ptr() == q.data_ptr() and out_k.data_ptr() == k.data_ptr()
    assert_matches(q, expected_q)
    assert_matches(k, expected_k)
    assert torch.equal(v, v_before)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "heads,kv_heads,head_dim,tokens", [(4, 2, 64, 1), (2, 2, 64, 33), (16, 8, 128, 7)]
)
def test_qk_norm_rotary_matches_qwen3_layers(
    device, dtype, heads, kv_heads, head_dim, tokens
) -> None:
    """q_norm/k_norm per head (Qwen3Attention.qk_transform) then RoPE, in one launch."""
    gen = torch.Generator().manual_seed(heads + tokens)
    rope = RotaryEmbedding(head_dim, MAX_POS, base=1e6, device=device)
    q_norm = _norm_layer(gen, head_dim, dtype, device)
    k_norm = _norm_layer(gen, head_dim, dtype, device)
    _, q, k, _ = _qkv(gen, tokens, heads, kv_heads, head_dim, dtype, device)
    positions = torch.randint(0, MAX_POS, (tokens,), generator=gen).to(device)

    with torch_path():
        normed_q = q_norm.normalize(q.view(tokens, heads, head_dim)).view(tokens, -1)
        normed_k = k_norm.normalize(k.view(tokens, kv_heads, head_dim)).view(tokens, -1)
        expected_q, expected_k = rope(positions, normed_q, normed_k)
    out_q, out_k = qk_norm_rotary(
        positions,
        q,
        k,
        rope.cos_cache,
        rope.sin_cache,
        head_dim,
        q_norm.weight,
        k_norm.weight,
        q_norm.eps,
    )

    # values up to ~8: 2 ulps of an operand is 1/16 at most
    assert_matches(out_q, expected_q, max_ulps=2, bf16_atol=1 / 16)
    assert_matches(out_k, expected_k, max_ulps=2, bf16_atol=1 / 16)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("intermediate", [64, 1100])  # 1100: a partial second column block
@pytest.mark.parametrize("tokens", [1, 7, 33])
def test_silu_and_mul_matches_layer(device, dtype, intermediate, tokens) -> None:
    gen = torch.Generator().manual_seed(intermediate + tokens)
    x = _randn(gen, tokens, 2 * intermediate, scale=3.0).to(dtype).to(device)

    with torch_path():
        expected = SiluAndMul()(x)

    out = silu_and_mul(x)

    assert out.shape == (tokens, intermediate)
    assert_matches(out, expected, max_ulps=1)


def test_empty_batches(device) -> None:
    """Zero tokens (an empty step) launch nothing and return empty results."""
    weight = torch.ones(64, device=device)
    x = torch.empty(0, 64, device=device)
    assert rms_norm(x, weight, 1e-6).shape == (0, 64)
    assert silu_and_mul(torch.empty(0, 128, device=device)).shape == (0, 64)
    rope = RotaryEmbedding(64, 16, device=device)
    q, k = apply_rotary(
        torch.empty(0, dtype=torch.long, device=device),
        torch.empty(0, 128, device=device),
        torch.empty(0, 64, device=device),
        rope.cos_cache,
        rope.sin_cache,
        64,
    )
    assert q.shape == (0, 128) and k.shape == (0, 64)


def test_rejects_bad_inputs(device) -> None:
    weight = torch.ones(64, device=device)
    with pytest.raises(ValueError, match="weight"):
        rms_norm(torch.ones(2, 32, device=device), weight, 1e-6)
    with pytest.raises(ValueError, match="contiguous"):
        rms_norm(torch.ones(64, 2, device=device).t(), weight, 1e-6)
    with pytest.raises(ValueError, match="even"):
        silu_and_mul(torch.ones(2, 7, device=device))
    rope = RotaryEmbedding(64, 16, device=device)
    with pytest.raises(ValueError, match="multiple of 64"):
        apply_rotary(
            torch.zeros(2, dtype=torch.long, device=device),
            torch.ones(2, 96, device=device),
            torch.ones(2, 64, device=device),
            rope.cos_cache,
            rope.sin_cache,
            64,
        )


def test_env_switch_disables_fused(monkeypatch) -> None:
    """Only CUDA tensors take the fused path; PAGEDLLM_DISABLE_FUSED_KERNELS=1 stops all of
    them, a list of names only those."""
    on_gpu = types.SimpleNamespace(is_cuda=True)  # use_fused only looks at .is_cuda
    monkeypatch.delenv(_fused.DISABLE_ENV, raising=False)
    assert all(_fused.use_fused(on_gpu, k) for k in _fused.KERNELS)
    assert not _fused.use_fused(torch.ones(1), "rmsnorm")
    monkeypatch.setenv(_fused.DISABLE_ENV, "1")
    assert not any(_fused.use_fused(on_gpu, k) for k in _fused.KERNELS)
    monkeypatch.setenv(_fused.DISABLE_ENV, "sampler, rotary")
    assert [_fused.use_fused(on_gpu, k) for k in _fused.KERNELS] == [True, False, True, True, False]


def _tiny_qwen3(dtype: torch.dtype, device: torch.device):
    from pagedllm.models.registry import build_model

    config = {
        "architectures": ["Qwen3ForCausalLM"],
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "vocab_size": 256,
        "max_position_embeddings": 128,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1e6,
    }
    model = build_model(config, dtype, device)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            shift, scale = (1.0, 0.2) if "norm" in name else (0.0, 0.15)
            p.copy_(_randn(gen, *p.shape, scale=scale, shift=shift).to(dtype))
    return model


@pytest.mark.parametrize("dtype", DTYPES)
def test_layers_use_kernels_when_fused(monkeypatch, device, dtype) -> None:
    """The wiring: a Qwen3 forward through the fused layers (forced on, so on CPU the kernels
    run in the interpreter) matches the torch layers."""
    model = _tiny_qwen3(dtype, device)
    input_ids = torch.randint(0, 256, (9,), generator=torch.Generator().manual_seed(1))
    input_ids, positions = input_ids.to(device), torch.arange(9, device=device)
    ctx = ForwardContext(None, [], TorchAttentionBackend())  # dense causal attention
    calls = []
    with torch.no_grad(), set_forward_context(ctx):
        monkeypatch.setattr(_fused, "use_fused", lambda x, kernel: False)
        expected = model(input_ids, positions)
        monkeypatch.setattr(_fused, "use_fused", lambda x, kernel: calls.append(kernel) or True)
        actual = model(input_ids, positions)
    # per layer: 2 norms, attention (q/k norm + rope), mlp activation; plus the final norm
    assert len(calls) == 2 * 4 + 1
    # 1-ulp differences (see above) can grow through the layers; a wiring bug is far larger
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 0.05, "rtol": 0.02}
    torch.testing.assert_close(actual, expected, **tol)
