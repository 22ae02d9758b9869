"""Gemma's fused kernels (RMSNorm with ``1 + w`` alone / with the residual stream around it /
with the embedding scale, Gemma 3's q/k norm + RoPE, GELU-tanh-and-mul) against the torch
layers, and the tiny Gemma 2 / Gemma 3 models with the kernels on against the torch path.

Rounding is the torch path's, so the kernels match it bit for bit except where a float32
intermediate is computed differently (see test_kernel_fused.py): ``1/rms`` (another summation
order, the approximate ``rsqrt``) can flip a bf16 rounding by 1 ulp; GELU's ``tanh`` is
CUDA's ``tanhf`` on a GPU (as torch's) but an ``exp`` formula in the interpreter, and torch's
CPU GELU is its own vectorized code, so float32 is ~1e-6 relative off here and bf16 at most 1
ulp, rarely. What the kernels compute from their own normalized rows (the residual sum, the
next norm, the scaled embedding) is checked exactly against the plain kernel.
"""

from __future__ import annotations

import pytest
import torch
from fused_utils import assert_matches, qkv_slices, randn, torch_path

from pagedllm.attention.metadata import ForwardContext, set_forward_context
from pagedllm.attention.torch_backend import TorchAttentionBackend
from pagedllm.kernels.activation import gelu_tanh_and_mul
from pagedllm.kernels.gemma_norm import gemma_add_rms_norm, gemma_rms_norm, gemma_scale_rms_norm
from pagedllm.kernels.rotary import qk_norm_rotary
from pagedllm.layers import _fused
from pagedllm.layers.activation import GeluTanhAndMul
from pagedllm.layers.rmsnorm import GemmaRMSNorm
from pagedllm.layers.rotary import RotaryEmbedding

DTYPES = [torch.float32, torch.bfloat16]


def _norm(gen, size: int, dtype: torch.dtype, device) -> GemmaRMSNorm:
    layer = GemmaRMSNorm(size, 1e-6, dtype, device)
    layer.weight.data = randn(gen, size, scale=0.5).to(dtype).to(device)  # 1 + w around 1
    return layer


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [96, 1152])  # 96: a masked row tail; 1152: Gemma 3 1B
@pytest.mark.parametrize("tokens", [1, 33])
def test_gemma_norm_matches_layer(device, dtype, hidden, tokens) -> None:
    gen = torch.Generator().manual_seed(hidden + tokens)
    layer = _norm(gen, hidden, dtype, device)
    x = randn(gen, tokens, hidden, scale=3.0).to(dtype).to(device)
    with torch_path():
        expected = layer(x)

    assert_matches(gemma_rms_norm(x, layer.weight, layer.eps), expected, max_ulps=1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemma_norm_per_head_on_qkv_slice(device, dtype) -> None:
    """Gemma 3's q_norm rows: heads of 256 values in a strided [T, heads, 256] view."""
    gen = torch.Generator().manual_seed(2)
    tokens, heads, head_dim = 7, 3, 256
    layer = _norm(gen, head_dim, dtype, device)
    _, q, _, _ = qkv_slices(gen, tokens, heads, 1, head_dim, dtype, device)
    q3 = q.view(tokens, heads, head_dim)
    assert not q3.is_contiguous()
    with torch_path():
        expected = layer(q3)

    assert_matches(gemma_rms_norm(q3, layer.weight, layer.eps), expected, max_ulps=1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden,tokens", [(96, 7), (1152, 5)])
def test_gemma_add_norm(device, dtype, hidden, tokens) -> None:
    """post-norm + residual add + next norm: the sum and the next norm are exactly what the
    plain kernel and torch's add give from the kernel's normalized branch, and the whole
    matches the torch layers within the norm's tolerance."""
    gen = torch.Generator().manual_seed(hidden * tokens)
    post, nxt = _norm(gen, hidden, dtype, device), _norm(gen, hidden, dtype, device)
    nxt.eps = 1e-5  # the kernel takes the next norm's own eps
    x = randn(gen, tokens, hidden, scale=3.0).to(dtype).to(device)
    residual = randn(gen, tokens, hidden, scale=2.0).to(dtype).to(device)

    out, summed = gemma_add_rms_norm(x, residual, post.weight, nxt.weight, post.eps, nxt.eps)

    assert_matches(summed, residual + gemma_rms_norm(x, post.weight, post.eps))
    assert_matches(out, gemma_rms_norm(summed, nxt.weight, nxt.eps))
    with torch_path():
        expected_out, expected_sum = post.add_to(x, residual, nxt)
    # a 1-ulp flip of the branch's norm moves the sum by up to 1 ulp of that norm (|x| < ~8)
    assert_matches(summed, expected_sum, max_ulps=2, bf16_atol=1 / 32)
    assert_matches(out, expected_out, max_ulps=2, bf16_atol=1 / 16)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemma_scale_norm(device, dtype) -> None:
    """Embedding * sqrt(hidden) (rounded like torch's scalar multiply) and the first norm."""
    gen = torch.Generator().manual_seed(4)
    hidden, tokens = 1152, 9
    layer = _norm(gen, hidden, dtype, device)
    x = randn(gen, tokens, hidden, scale=0.05).to(dtype).to(device)
    scale = float(torch.tensor(hidden**0.5, dtype=dtype))

    out, scaled = gemma_scale_rms_norm(x, scale, layer.weight, layer.eps)

    assert_matches(scaled, x * scale)
    assert_matches(out, gemma_rms_norm(scaled, layer.weight, layer.eps))
    with torch_path():
        expected, _ = layer.scale_then(x, scale)
    assert_matches(out, expected, max_ulps=1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,kv_heads,tokens", [(4, 1, 7), (3, 2, 1)])  # 3: masked block
def test_gemma3_qk_norm_rotary(device, dtype, heads, kv_heads, tokens) -> None:
    """Gemma 3's q_norm/k_norm (head_dim 256) then RoPE, in one launch."""
    gen = torch.Generator().manual_seed(heads + tokens)
    head_dim = 256
    rope = RotaryEmbedding(head_dim, 4096, base=1e6, device=device)
    q_norm, k_norm = _norm(gen, head_dim, dtype, device), _norm(gen, head_dim, dtype, device)
    _, q, k, _ = qkv_slices(gen, tokens, heads, kv_heads, head_dim, dtype, device)
    positions = torch.randint(0, 4096, (tokens,), generator=gen).to(device)
    with torch_path():
        normed_q = q_norm(q.view(tokens, heads, head_dim)).view(tokens, -1)
        normed_k = k_norm(k.view(tokens, kv_heads, head_dim)).view(tokens, -1)
        expected_q, expected_k = rope(positions, normed_q, normed_k)
    args = (positions, q, k, rope.cos_cache, rope.sin_cache, head_dim)

    out_q, out_k = qk_norm_rotary(*args, q_norm.weight, k_norm.weight, q_norm.eps, gemma=True)
    llama_q, _ = qk_norm_rotary(*args, q_norm.weight, k_norm.weight, q_norm.eps)

    # a flipped norm rounding goes through the rotation (see test_kernel_fused.py)
    assert_matches(out_q, expected_q, max_ulps=2, bf16_atol=1 / 16)
    assert_matches(out_k, expected_k, max_ulps=2, bf16_atol=1 / 16)
    assert not torch.allclose(llama_q.float(), out_q.float(), atol=0.1)  # the flag matters


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("intermediate", [96, 1100])  # 1100: a partial second column block
@pytest.mark.parametrize("tokens", [1, 33])
def test_gelu_tanh_and_mul_matches_layer(device, on_gpu, dtype, intermediate, tokens) -> None:
    gen = torch.Generator().manual_seed(intermediate + tokens)
    x = randn(gen, tokens, 2 * intermediate, scale=3.0).to(dtype).to(device)
    with torch_path():
        expected = GeluTanhAndMul()(x)

    out = gelu_tanh_and_mul(x)

    assert out.shape == (tokens, intermediate)
    if on_gpu:  # torch's CUDA GELU: the same formula, FMA and tanhf
        assert_matches(out, expected, max_ulps=1, max_off=0.001)
    else:
        # For gate << 0 GELU is 0.5 * g * (1 + tanh(..)) with tanh ~ -1: the tail's value is
        # the few float32 ulps left after the cancellation, and the interpreter's tanh and
        # torch's CPU one (each ~1 ulp) disagree there by many ulps of a value < 1e-5.
        rtol = 2e-6 if dtype == torch.float32 else 1 / 128  # 1 bf16 ulp
        torch.testing.assert_close(out.float(), expected.float(), atol=2e-5, rtol=rtol)
        if dtype == torch.bfloat16:
            assert (out != expected).float().mean().item() <= 0.02


def test_gemma_kernels_reject_bad_inputs(device) -> None:
    w = torch.zeros(64, device=device)
    x = torch.ones(3, 64, device=device)
    with pytest.raises(ValueError, match="residual"):
        gemma_add_rms_norm(x, torch.ones(3, 32, device=device), w, w, 1e-6, 1e-6)
    with pytest.raises(ValueError, match="next_weight"):
        gemma_add_rms_norm(x, x, w, torch.zeros(32, device=device), 1e-6, 1e-6)
    with pytest.raises(ValueError, match=r"\[T, N\]"):
        gemma_scale_rms_norm(torch.ones(2, 3, 64, device=device), 8.0, w, 1e-6)
    with pytest.raises(ValueError, match="even"):
        gelu_tanh_and_mul(torch.ones(2, 7, device=device))
    assert gemma_add_rms_norm(x[:0], x[:0], w, w, 1e-6, 1e-6)[0].shape == (0, 64)


def _tiny_gemma(arch: str, dtype: torch.dtype, device: torch.device):
    from pagedllm.models.registry import build_model

    config = {
        "architectures": [arch],
        "hidden_size": 96,
        "intermediate_size": 160,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 256 if arch == "Gemma3ForCausalLM" else 32,
        "vocab_size": 128,
        "max_position_embeddings": 64,
        "rms_norm_eps": 1e-6,
        "query_pre_attn_scalar": 32,
        "sliding_window": 4,
        "layer_types": ["sliding_attention", "full_attention"],
        "attn_logit_softcapping": 50.0 if arch == "Gemma2ForCausalLM" else None,
    }
    model = build_model(config, dtype, device)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.3 if "norm" in name else (0.05 if "embed" in name else 0.15)
            p.copy_(randn(gen, *p.shape, scale=scale).to(dtype))
    return model


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("arch", ["Gemma2ForCausalLM", "Gemma3ForCausalLM"])
def test_gemma_layers_use_kernels_when_fused(monkeypatch, device, dtype, arch) -> None:
    """The wiring: a Gemma forward with the kernels forced on (the interpreter on CPU) calls
    each of them and matches the torch layers."""
    model = _tiny_gemma(arch, dtype, device)
    input_ids = torch.randint(0, 128, (9,), generator=torch.Generator().manual_seed(1))
    input_ids, positions = input_ids.to(device), torch.arange(9, device=device)
    ctx = ForwardContext(None, [], TorchAttentionBackend())  # dense causal attention
    calls: list[str] = []
    with torch.no_grad(), set_forward_context(ctx):
        monkeypatch.setattr(_fused, "use_fused", lambda x, kernel: False)
        expected = model(input_ids, positions)
        monkeypatch.setattr(_fused, "use_fused", lambda x, kernel: calls.append(kernel) or True)
        actual = model(input_ids, positions)
    # the scaled embedding's norm; per layer: rope (+ q/k norm), 2 norm-add-norms, GeGLU
    assert calls == ["rmsnorm"] + ["rotary", "rmsnorm", "gelu_and_mul", "rmsnorm"] * 2
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 0.05, "rtol": 0.02}
    torch.testing.assert_close(actual, expected, **tol)


@pytest.mark.parametrize("tokens", [48, 8192])  # a decode batch and a prefill chunk
def test_gemma3_1b_sizes_on_gpu(on_gpu, device, tokens) -> None:
    """Gemma 3 1B's shapes in bf16 on a GPU against torch's CUDA ops (too slow for the
    interpreter). Prints how many values differ at all."""
    if not on_gpu:
        pytest.skip("real sizes need a GPU")
    gen = torch.Generator().manual_seed(tokens)
    dtype, hidden, inter, head_dim = torch.bfloat16, 1152, 6912, 256
    post, nxt = _norm(gen, hidden, dtype, device), _norm(gen, hidden, dtype, device)
    q_norm, k_norm = _norm(gen, head_dim, dtype, device), _norm(gen, head_dim, dtype, device)
    rope = RotaryEmbedding(head_dim, 32768, base=1e6, device=device)
    x = randn(gen, tokens, hidden, scale=3.0).to(dtype).to(device)
    residual = randn(gen, tokens, hidden, scale=2.0).to(dtype).to(device)
    gate_up = randn(gen, tokens, 2 * inter, scale=3.0).to(dtype).to(device)
    _, q, k, _ = qkv_slices(gen, tokens, 4, 1, head_dim, dtype, device)
    positions = torch.randint(0, 32768, (tokens,), generator=gen).to(device)
    with torch_path():
        want_out, want_sum = post.add_to(x, residual, nxt)
        want_act = GeluTanhAndMul()(gate_up)
        want_q, want_k = rope(
            positions,
            q_norm(q.view(tokens, 4, head_dim)).view(tokens, -1),
            k_norm(k.view(tokens, 1, head_dim)).view(tokens, -1),
        )
    out, summed = gemma_add_rms_norm(x, residual, post.weight, nxt.weight, post.eps, nxt.eps)
    act = gelu_tanh_and_mul(gate_up)
    rope_args = (positions, q, k, rope.cos_cache, rope.sin_cache, head_dim)
    out_q, out_k = qk_norm_rotary(*rope_args, q_norm.weight, k_norm.weight, 1e-6, gemma=True)
    pairs = {"sum": (summed, want_sum), "norm": (out, want_out), "gelu": (act, want_act),
             "q": (out_q, want_q), "k": (out_k, want_k)}  # fmt: skip
    print({name: f"{(a != b).sum().item()}/{a.numel()}" for name, (a, b) in pairs.items()})
    assert_matches(act, want_act, max_ulps=1, max_off=0.001)
    for name in ("sum", "norm", "q", "k"):
        assert_matches(*pairs[name], max_ulps=2, bf16_atol=1 / 16, max_off=0.001)
