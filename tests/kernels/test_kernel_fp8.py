"""FP8 (e4m3) KV cache: the Triton kernels vs the torch path and a dense float32 reference.

Pages hold ``x / scale`` in e4m3; the reference attends over the dequantized K/V
(``page * scale``) in float32, so kernel and reference see the same inputs and only the
accumulation order differs. Scales other than 1.0 catch a kernel that forgets one of them.
"""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

from kernel_utils import (
    PagedCase,
    dense_reference,
    make_metadata,
    make_paged_case,
    tolerance,
)
from pagedllm.attention.kv_quant import FP8_DTYPE, dequantize, quantize
from pagedllm.attention.torch_backend import TorchAttentionBackend
from pagedllm.kernels import paged_decode_attention, paged_extend_attention, reshape_and_cache
from pagedllm.kernels._fp8 import e4m3_to_f16_bits
from pagedllm.kernels.paged_decode import FP8_PATHS

F32, BF16 = torch.float32, torch.bfloat16
NUM_KV_HEADS = 2
SCALES = (0.5, 0.125)  # k_scale, v_scale


def _fp8_case(case: PagedCase, dtype: torch.dtype) -> tuple[PagedCase, torch.Tensor]:
    """``case`` with its pages quantized to e4m3 and its dense K/V replaced by what the pages
    now hold (dequantized); returns the case and the ``[k_scale, v_scale]`` tensor."""
    device = case.kv_cache.device
    scale = torch.tensor(SCALES, dtype=torch.float32, device=device)
    cache = torch.stack([quantize(case.kv_cache[i], scale[i]) for i in range(2)])
    keys = [dequantize(quantize(k, scale[0]), scale[0], dtype) for k in case.keys]
    values = [dequantize(quantize(v, scale[1]), scale[1], dtype) for v in case.values]
    fp8 = PagedCase(cache, case.block_tables, case.seq_lens, keys, values, case.block_size)
    return fp8, scale


def _write_both(device, key, value, block_size=8, num_blocks=4):
    """(kernel pages, torch-path pages) after writing ``key``/``value`` at random slots."""
    gen = torch.Generator().manual_seed(1)
    slots = torch.randperm(num_blocks * block_size, generator=gen)[: key.shape[0]]
    slots[3] = -1  # a padding row: skipped
    scale = torch.tensor(SCALES, dtype=torch.float32)
    shape = (2, num_blocks, block_size, *key.shape[1:])
    got = torch.zeros(shape, dtype=FP8_DTYPE, device=device)
    reshape_and_cache(key.to(device), value.to(device), got, slots.to(device), scale.to(device))
    expected = torch.zeros(shape, dtype=FP8_DTYPE)
    TorchAttentionBackend().write_kv(key, value, expected, slots, kv_scale=scale)
    return got.cpu(), expected


def test_cache_write_scales_and_saturates(device: torch.device) -> None:
    # inputs that are e4m3 values times the scale, so no rounding is involved: the Triton
    # interpreter's float8 downcast drops the carry of round-to-nearest (a value just under
    # a power of two comes out half as large), which the GPU's conversion does not
    gen = torch.Generator().manual_seed(2)
    raw = torch.randn(2, 21, NUM_KV_HEADS, 64, generator=gen) * 8.0
    key, value = (dequantize(quantize(raw[i], None), SCALES[i], F32) for i in range(2))
    key[0, 0, :2] = torch.tensor([1e4, -1e4])  # past 448 * k_scale: must saturate, not NaN
    got, expected = _write_both(device, key, value)
    assert torch.equal(got.view(torch.uint8), expected.view(torch.uint8))
    assert got.float().abs().max().item() == 448.0
    assert expected.float()[0].abs().sum() > 0 and expected.float()[1].abs().sum() > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the interpreter rounds float8 wrongly")
def test_cache_write_rounds_like_torch(device: torch.device) -> None:
    gen = torch.Generator().manual_seed(3)
    key = torch.randn(21, NUM_KV_HEADS, 128, generator=gen) * 4.0
    value = torch.randn(21, NUM_KV_HEADS, 128, generator=gen) * 1e-2  # subnormals too
    got, expected = _write_both(device, key, value)
    assert torch.equal(got.view(torch.uint8), expected.view(torch.uint8))


def _check_decode(device, dtype, num_heads, num_splits, seed, **kw):
    """Decode over fp8 pages (scales != 1) against the dense reference; returns what the
    oracle needs: (case, query, out, scale)."""
    lens = [1, 9, 40, 77]
    case = make_paged_case(lens, 16, NUM_KV_HEADS, 64, F32, device, seed=seed)
    case, scale = _fp8_case(case, F32)
    query = torch.randn(len(lens), num_heads, 64, generator=torch.Generator().manual_seed(seed))
    query = query.to(dtype).to(device)
    out = torch.full_like(query, float("nan"))
    paged_decode_attention(
        query, case.kv_cache, case.block_tables, case.seq_lens, 0.125, num_splits, out=out,
        kv_scale=scale, **kw,
    )  # fmt: skip
    for i in range(len(lens)):
        ref = dense_reference(query[i : i + 1], case.keys[i], case.values[i], 0.125)[0]
        torch.testing.assert_close(out[i].float(), ref, **tolerance(dtype))
    return case, query, out, scale


@pytest.mark.parametrize("dtype,num_splits", [(F32, 1), (BF16, 3)])
def test_decode_fp8_matches_dense(device: torch.device, dtype: torch.dtype, num_splits: int):
    case, query, out, scale = _check_decode(device, dtype, 8, num_splits, seed=4)
    # the torch path (the CPU engine) agrees on the same pages
    n = query.shape[0]
    meta = make_metadata(case, [1] * n, n, torch.zeros(0, dtype=torch.long))
    oracle = TorchAttentionBackend().forward(query.cpu(), case.kv_cache.cpu(),
                                             _to_cpu(meta), 0.125, kv_scale=scale.cpu())  # fmt: skip
    torch.testing.assert_close(out.cpu().float(), oracle.float(), **tolerance(dtype))


@pytest.mark.parametrize("fp8_path", sorted(FP8_PATHS))
@pytest.mark.parametrize("cvt_bits", [False, True])
def test_decode_fp8_variants_match_dense(device: torch.device, fp8_path: str, cvt_bits: bool):
    """Every way of multiplying fp8 pages under a bf16 query (benchmarks/fp8_kernel_variants.py
    times them) gives the same attention; 2 query heads per KV head as in Qwen3."""
    _check_decode(device, BF16, 4, 2, seed=5, block_n=32, fp8_path=fp8_path, fp8_cvt_bits=cvt_bits)


def test_decode_rejects_an_unknown_fp8_path(device: torch.device) -> None:
    case = make_paged_case([3], 16, NUM_KV_HEADS, 64, F32, device, seed=5)
    query = torch.zeros(1, 4, 64, device=device)
    with pytest.raises(ValueError, match="fp8_path"):
        paged_decode_attention(query, case.kv_cache, case.block_tables, case.seq_lens, 0.1,
                               fp8_path="mma")  # fmt: skip


@triton.jit
def _convert_bits(src, dst):
    offs = tl.arange(0, 256)
    tl.store(dst + offs, e4m3_to_f16_bits(tl.load(src + offs)))


def test_e4m3_bit_conversion_is_exact(device: torch.device) -> None:
    """All 254 finite e4m3 bytes (subnormals and both zeros included) -> fp16 by bits."""
    raw = torch.arange(256, dtype=torch.uint8)
    finite = (raw & 0x7F) != 0x7F
    src = raw.view(FP8_DTYPE).to(device)
    dst = torch.empty(256, dtype=torch.float16, device=device)
    _convert_bits[(1,)](src, dst)
    got, want = dst.cpu()[finite], raw.view(FP8_DTYPE)[finite].to(torch.float16)
    assert torch.equal(got.view(torch.int16), want.view(torch.int16))  # -0.0 stays -0.0


@pytest.mark.parametrize("dtype", [F32, BF16])
def test_extend_fp8_matches_dense(device: torch.device, dtype: torch.dtype) -> None:
    seqs = [(37, 37), (50, 13), (20, 1)]
    case = make_paged_case([s for s, _ in seqs], 8, NUM_KV_HEADS, 64, F32, device, seed=9)
    case, scale = _fp8_case(case, F32)
    query_lens = [q for _, q in seqs]
    query = torch.randn(sum(query_lens), 8, 64, generator=torch.Generator().manual_seed(3))
    query = query.to(dtype).to(device)
    qsl = [0, *torch.tensor(query_lens).cumsum(0).tolist()]
    out = torch.full_like(query, float("nan"))
    paged_extend_attention(
        query, case.kv_cache, case.block_tables, case.seq_lens,
        torch.tensor(qsl, dtype=torch.int32, device=device), 0.125,
        max_query_len=max(query_lens), out=out, kv_scale=scale,
    )  # fmt: skip
    for i in range(len(seqs)):
        rows = slice(qsl[i], qsl[i + 1])
        ref = dense_reference(query[rows], case.keys[i], case.values[i], 0.125)
        torch.testing.assert_close(out[rows].float(), ref, **tolerance(dtype))


def _to_cpu(meta):
    """``meta`` with its tensors on the CPU (the torch oracle runs there)."""
    for name in ("slot_mapping", "block_tables", "seq_lens", "query_start_loc"):
        setattr(meta, name, getattr(meta, name).cpu())
    return meta


@pytest.mark.parametrize("dtype", [F32, BF16])
def test_triton_backend_fp8_mixed_batch_matches_torch(device: torch.device, dtype: torch.dtype):
    """write_kv then forward on 3 decodes + 3 prefill chunks, fp8 pages, scales != 1."""
    from test_triton_backend import _batch

    from pagedllm.attention.triton_backend import TritonAttentionBackend

    case, query, key, value, metadata = _batch(device, 16, 2, 4, 64, F32)
    scale = torch.tensor(SCALES, dtype=torch.float32, device=device)
    cache = torch.stack([quantize(case.kv_cache[i], scale[i]) for i in range(2)])
    # e4m3 values times the scale: the interpreter's float8 rounding is off (see above)
    key, value = (
        dequantize(quantize(x, scale[i]), scale[i], F32) for i, x in enumerate((key, value))
    )
    oracle_cache = cache.clone()
    backend = TritonAttentionBackend(max_model_len=4096, num_sms=8)
    backend.write_kv(key, value, cache, metadata.slot_mapping, kv_scale=scale)
    out = backend.forward(query.to(dtype), cache, metadata, 0.125, kv_scale=scale)
    oracle = TorchAttentionBackend()
    oracle.write_kv(key, value, oracle_cache, metadata.slot_mapping, kv_scale=scale)
    assert torch.equal(cache.view(torch.uint8), oracle_cache.view(torch.uint8))
    expected = oracle.forward(query.to(dtype), oracle_cache, metadata, 0.125, kv_scale=scale)
    torch.testing.assert_close(out.float(), expected.float(), **tolerance(dtype))


def test_bf16_pages_under_a_float32_model(device: torch.device) -> None:
    """kv_cache_dtype="bfloat16" with a float32 model: pages converted on load, no scale."""
    lens = [9, 40]
    case = make_paged_case(lens, 16, NUM_KV_HEADS, 64, BF16, device, seed=6)
    query = torch.randn(len(lens), 8, 64, generator=torch.Generator().manual_seed(4)).to(device)
    decode = paged_decode_attention(query, case.kv_cache, case.block_tables, case.seq_lens, 0.125)
    qsl = torch.tensor([0, 1, 2], dtype=torch.int32, device=device)
    extend = paged_extend_attention(
        query, case.kv_cache, case.block_tables, case.seq_lens, qsl, 0.125, max_query_len=1
    )
    for i in range(len(lens)):
        ref = dense_reference(query[i : i + 1], case.keys[i], case.values[i], 0.125)[0]
        torch.testing.assert_close(decode[i], ref, **tolerance(F32))
        torch.testing.assert_close(extend[i], ref, **tolerance(F32))


def test_swap_and_copy_move_fp8_pages_byte_for_byte() -> None:
    """CacheEngine on the CPU: swap out, swap in elsewhere, copy-on-write; float8 pages
    (whose CPU kernels lack index_copy_/index_fill_) arrive unchanged."""
    from pagedllm.worker.cache_engine import CacheEngine, KVCacheSpec

    spec = KVCacheSpec(num_layers=2, block_size=4, num_kv_heads=2, head_dim=8, dtype=FP8_DTYPE)
    engine = CacheEngine(spec, num_blocks=6, num_cpu_blocks=3, device=torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    for cache in engine.page_tensors:
        cache.view(torch.uint8).copy_(torch.randint(0, 120, cache.shape, generator=gen))
    before = [c.clone() for c in engine.page_tensors]
    engine.swap_out([(1, 0), (4, 2)])
    engine.swap_in([(0, 5), (2, 3)])
    engine.copy_blocks([(2, 0)])
    for old, new in zip(before, engine.page_tensors, strict=True):
        old, new = old.view(torch.uint8), new.view(torch.uint8)
        assert torch.equal(new[:, 5], old[:, 1]) and torch.equal(new[:, 3], old[:, 4])
        assert torch.equal(new[:, 0], old[:, 2]) and torch.equal(new[:, 2], old[:, 2])
    assert spec.bytes_per_block == 2 * 2 * 4 * 2 * 8  # one byte per element
