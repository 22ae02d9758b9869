"""Paged decode attention (one query token per sequence), GQA-aware, split along the context.

Grid: ``(num_seqs, num_kv_heads, num_splits)``. One program owns *all* query heads of one KV
head group, so each K/V page row is read from HBM once per group rather than once per query
head; the group is padded to 16 rows so the score and value products run on tensor cores
(``tl.dot``). Decode is bandwidth bound, so the wasted padded rows cost nothing measurable.

Flash-decoding: the context of each sequence is cut into ``num_splits`` contiguous partitions
computed by separate programs, so a few long sequences still fill every SM. With more than one
split each program writes an unnormalised partial (output, running max, running sum) and
``_decode_reduce_kernel`` merges them; with one split the first kernel writes the output itself.
Scores are kept in the log2 domain (``qk_scale = scale * log2(e)``) so ``exp2`` can be used.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from pagedllm.kernels._common import dot_options, fp16_dots_for_fp8
from pagedllm.kernels._fp8 import fp8_tile_to_f16
from pagedllm.kernels._softcap import soft_cap

LOG2E = math.log2(math.e)
# How attention over float8 pages under a bf16 query multiplies (see paged_decode_attention).
FP8_PATHS = {"dot": 0, "dot_kt": 1, "fma": 2}


# Values that change from step to step are not specialized on (Triton would compile a
# variant for each "== 1" / "% 16 == 0" case: seconds of JIT in the middle of serving).
@triton.jit(do_not_specialize=["stride_bt", "sliding_window", "softcap"])
def _decode_split_kernel(
    q_ptr,
    cache_ptr,
    block_tables_ptr,
    seq_lens_ptr,
    out_ptr,
    part_out_ptr,
    part_m_ptr,
    part_l_ptr,
    scale_ptr,
    qk_scale,
    sliding_window,
    softcap,
    stride_qt,
    stride_qh,
    stride_ot,
    stride_oh,
    stride_ckv,
    stride_cb,
    stride_cs,
    stride_ch,
    stride_bt,
    NUM_HEADS: tl.constexpr,
    NUM_GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    DOT_FP32: tl.constexpr,
    KV_CAST: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    KV_F16: tl.constexpr,
    FP8_PATH: tl.constexpr,
    CVT_BITS: tl.constexpr,
):
    seq = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    if HAS_SCALE:  # fp8 pages hold k / k_scale: fold k_scale into the score scale
        qk_scale = qk_scale * tl.load(scale_ptr)

    seq_len = tl.load(seq_lens_ptr + seq)
    ctx_lo = 0
    if HAS_WINDOW:
        ctx_lo = tl.maximum(seq_len - sliding_window, 0)
    # Partitions are sized per sequence (rounded to whole tiles), so short sequences in a
    # mixed batch do not pay for empty splits beyond an early exit.
    per_split = tl.cdiv(tl.cdiv(seq_len - ctx_lo, NUM_SPLITS), BLOCK_N) * BLOCK_N
    lo = ctx_lo + split * per_split
    hi = tl.minimum(lo + per_split, seq_len)

    offs_g = tl.arange(0, GROUP_PAD)
    offs_d = tl.arange(0, HEAD_DIM)
    heads = kvh * NUM_GROUP + offs_g
    gmask = offs_g < NUM_GROUP
    q = tl.load(
        q_ptr + seq * stride_qt + heads[:, None] * stride_qh + offs_d[None, :],
        mask=gmask[:, None],
        other=0.0,
    )
    if DOT_FP32 or FP8_PATH == 2:
        q = q.to(tl.float32)
    if KV_F16 and FP8_PATH != 2:  # fp8 pages, bf16 query: both dots in fp16 (see the wrapper)
        q = tl.clamp(q.to(tl.float32), -65504.0, 65504.0).to(tl.float16)

    m_i = tl.full([GROUP_PAD], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([GROUP_PAD], dtype=tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_DIM], dtype=tl.float32)
    bt_row = block_tables_ptr + seq.to(tl.int64) * stride_bt
    k_base = cache_ptr + kvh * stride_ch
    for start in range(lo, hi, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        nmask = offs_n < hi
        # A tile of keys may span several pages: look up the page of every key row.
        blk = tl.load(bt_row + offs_n // BLOCK_SIZE, mask=nmask, other=0).to(tl.int64)
        rows = blk * stride_cb + (offs_n % BLOCK_SIZE) * stride_cs
        kv_offs = rows[:, None] + offs_d[None, :]
        if FP8_PATH == 1:  # K read as [d, keys]: the dot's B operand in its own layout
            kt = tl.load(k_base + offs_d[:, None] + rows[None, :], mask=nmask[None, :], other=0.0)
            kt = fp8_tile_to_f16(kt, CVT_BITS)
            s = tl.dot(q, kt, input_precision=DOT_PRECISION) * qk_scale
        elif FP8_PATH == 2:  # CUDA cores: the group has few rows, products and sums in fp32
            k = fp8_tile_to_f16(tl.load(k_base + kv_offs, mask=nmask[:, None], other=0.0), CVT_BITS)
            s = tl.sum(q[:, None, :] * k.to(tl.float32)[None, :, :], 2) * qk_scale
        else:
            k = tl.load(k_base + kv_offs, mask=nmask[:, None], other=0.0)
            if KV_F16:
                k = fp8_tile_to_f16(k, CVT_BITS)
            elif KV_CAST:  # other float pages: convert in registers, same dot as bf16
                k = k.to(q.dtype)
            if DOT_FP32:
                k = k.to(tl.float32)
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        if HAS_SOFTCAP:
            s = soft_cap(s, softcap)
        s = tl.where(nmask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(k_base + stride_ckv + kv_offs, mask=nmask[:, None], other=0.0)
        if KV_F16:
            v = fp8_tile_to_f16(v, CVT_BITS)
        elif KV_CAST:
            v = v.to(q.dtype)
        if DOT_FP32:
            v = v.to(tl.float32)
        if FP8_PATH == 2:
            pv = tl.sum(p[:, :, None] * v.to(tl.float32)[None, :, :], 1)
        else:
            pv = tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        acc = acc * alpha[:, None] + pv
        m_i = m_new
    if HAS_SCALE:  # the output is linear in V: apply v_scale once (partials too)
        acc = acc * tl.load(scale_ptr + 1)

    if NUM_SPLITS == 1:
        l_safe = tl.where(l_i > 0.0, l_i, 1.0)
        out = acc / l_safe[:, None]
        tl.store(
            out_ptr + seq * stride_ot + heads[:, None] * stride_oh + offs_d[None, :],
            out.to(out_ptr.dtype.element_ty),
            mask=gmask[:, None],
        )
    else:
        # Partials are [num_seqs, num_heads, NUM_SPLITS(, HEAD_DIM)] float32, contiguous.
        idx = (seq * NUM_HEADS + heads) * NUM_SPLITS + split
        tl.store(part_m_ptr + idx, m_i, mask=gmask)
        tl.store(part_l_ptr + idx, l_i, mask=gmask)
        tl.store(part_out_ptr + idx[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=gmask[:, None])


@triton.jit
def _decode_reduce_kernel(
    out_ptr,
    part_out_ptr,
    part_m_ptr,
    part_l_ptr,
    stride_ot,
    stride_oh,
    NUM_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    SPLITS_PAD: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    offs_s = tl.arange(0, SPLITS_PAD)
    offs_d = tl.arange(0, HEAD_DIM)
    smask = offs_s < NUM_SPLITS
    idx = (seq * NUM_HEADS + head) * NUM_SPLITS + offs_s
    m = tl.load(part_m_ptr + idx, mask=smask, other=float("-inf"))
    l_part = tl.load(part_l_ptr + idx, mask=smask, other=0.0)
    m_max = tl.max(m, 0)
    # Empty splits carry m = -inf; an empty sequence (graph padding row) has all -inf: keep it
    # finite so the padding row comes out as zeros instead of NaN.
    m_max = tl.where(m_max == float("-inf"), 0.0, m_max)
    w = tl.exp2(m - m_max)
    denom = tl.sum(w * l_part, 0)
    denom = tl.where(denom > 0.0, denom, 1.0)
    o = tl.load(
        part_out_ptr + idx[:, None] * HEAD_DIM + offs_d[None, :],
        mask=smask[:, None],
        other=0.0,
    )
    out = tl.sum(o * w[:, None], 0) / denom
    tl.store(
        out_ptr + seq * stride_ot + head * stride_oh + offs_d, out.to(out_ptr.dtype.element_ty)
    )


def default_num_splits(
    num_seqs: int,
    num_kv_heads: int,
    max_seq_len: int,
    num_sms: int,
    max_splits: int = 64,
    min_tokens_per_split: int = 256,
) -> int:
    """Pick a split count from static sizes only (CUDA-graph safe: no device data read).

    Split until there are about two programs per SM, but never into partitions shorter than
    ``min_tokens_per_split`` keys, where the extra reduce pass would cost more than it hides.
    When the batch alone cannot fill the SMs (few long sequences), aim for four programs per
    SM: each program then streams a shorter partition and more loads are in flight. Measured on
    an H200 (benchmarks/long_context.py): 1 x 128k context, 16 splits 1.96 TB/s, 64 splits
    3.42 TB/s; 8 x 32k, 5 splits 3.70 TB/s, 8 splits 3.82 TB/s.

    The count is a power of two: each count is a separate compiled variant of the kernels, so
    the few possible ones are compiled at start-up (``warm_up_decode_variants``) and none in
    the middle of serving (a mixed batch's decode rows vary in number every step).
    """
    programs = max(1, num_seqs * num_kv_heads)
    per_sm = 4 if programs < num_sms else 2
    want = -(-per_sm * num_sms // programs)
    by_len = max(1, max_seq_len // min_tokens_per_split)
    return _floor_pow2(max(1, min(want, by_len, max_splits)))


def _floor_pow2(n: int) -> int:
    return 1 << (n.bit_length() - 1)


def decode_split_variants(max_splits: int = 64) -> list[int]:
    """Every split count ``default_num_splits`` can return under ``max_splits``."""
    return [1 << i for i in range(_floor_pow2(max_splits).bit_length())]


def paged_decode_attention(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    num_splits: int = 1,
    sliding_window: int | None = None,
    out: torch.Tensor | None = None,
    block_n: int | None = None,
    softcap: float | None = None,
    num_warps: int = 4,
    num_stages: int = 2,
    kv_scale: torch.Tensor | None = None,
    fp8_path: str = "dot_kt",
    fp8_cvt_bits: bool = False,
) -> torch.Tensor:
    """Attention of one query token per sequence over its paged context.

    ``query`` ``[B, H, d]`` (row ``i`` is sequence ``i``'s newest token), ``kv_cache``
    ``[2, num_blocks, block_size, kvh, d]``, ``block_tables`` ``[>=B, max_blocks]`` int32,
    ``seq_lens`` ``[>=B]`` (context length including the new token). Returns ``[B, H, d]``
    (written into ``out`` when given). Launch shapes depend only on ``B``, ``num_splits`` and
    static sizes, so this is safe to capture in a CUDA graph. Only keys inside the window are
    read (pages before it may be the null block); ``softcap`` caps scores as
    ``softcap * tanh(score / softcap)`` (Gemma 2). A float8 ``kv_cache`` is dequantized on
    load with ``kv_scale`` (float32 ``[2]``: K, V; None: 1.0), accumulating in float32.

    ``fp8_path`` picks how float8 pages under a bf16 query are multiplied (``FP8_PATHS``;
    ignored for other page dtypes): ``dot`` converts the tiles to fp16 for tensor-core dots,
    ``dot_kt`` too but reads K as ``[d, keys]`` so the tile leaves shared memory already in
    the dot's operand layout, ``fma`` uses no tensor cores (fp32 products and sums over the
    GQA group's few rows). ``fp8_cvt_bits`` converts e4m3 by bit manipulation instead of the
    hardware conversion (``kernels/_fp8.py``). Default ``dot_kt``: cross-compiled for sm_90
    (triton 3.6 and 3.9, ``benchmarks/kernel_ir.py``) it is the ``dot`` code without the
    byte-wise relayout of K; the CUDA-core path costs ~900 shuffles per tile (Triton spreads
    d over the lanes) and the bit conversion ~4x the instructions of ``cvt``; the remaining gap
    to bf16 is V (8-bit MMA operands along keys come out of shared memory one byte at a time)
    and registers (141 vs 72 per thread: 3 instead of 5 programs per SM).
    """
    num_seqs, num_heads, head_dim = query.shape
    out = torch.empty_like(query) if out is None else out
    if num_seqs == 0:
        return out
    num_kv_heads, block_size = kv_cache.shape[3], kv_cache.shape[2]
    group = num_heads // num_kv_heads
    kv_f16 = fp16_dots_for_fp8(kv_cache.dtype, query.dtype)
    precision, upcast = dot_options(torch.float16 if kv_f16 else query.dtype)
    if fp8_path not in FP8_PATHS:
        raise ValueError(f"fp8_path must be one of {sorted(FP8_PATHS)}; got {fp8_path!r}")
    path = FP8_PATHS[fp8_path] if kv_f16 else 0
    # tensor-core dots need 16 rows; the CUDA-core path only pays for the group's own rows
    group_pad = (
        triton.next_power_of_2(group) if path == 2 else max(16, triton.next_power_of_2(group))
    )
    if block_n is None:
        # fp8 pages: 128-key tiles keep twice the bytes in flight per program; on the H200 the
        # default dot_kt path with 128-key tiles ran 1.10x (8 x 32k), 1.38x (1 x 128k) and 1.48x
        # (256 x 700) the speed of bf16 pages, 64-key tiles 0.83-1.35x
        # (benchmarks/results/fp8_kernel_variants_h200.json). The interpreter keeps 64.
        block_n = 128 if kv_f16 and query.is_cuda else 64
    partial_shape = (num_seqs, num_heads, num_splits) if num_splits > 1 else (1,)
    part_m = torch.empty(partial_shape, dtype=torch.float32, device=query.device)
    part_l = torch.empty(partial_shape, dtype=torch.float32, device=query.device)
    part_out = torch.empty(
        (*partial_shape, head_dim) if num_splits > 1 else (1,),
        dtype=torch.float32,
        device=query.device,
    )
    if block_tables.stride(-1) != 1 or seq_lens.stride(0) != 1:
        # the kernels index table rows and lengths as contiguous vectors
        raise ValueError("block_tables rows and seq_lens must be contiguous")
    _decode_split_kernel[(num_seqs, num_kv_heads, num_splits)](
        query,
        kv_cache,
        block_tables,
        seq_lens,
        out,
        part_out,
        part_m,
        part_l,
        seq_lens if kv_scale is None else kv_scale,  # unread without a scale
        scale if softcap else scale * LOG2E,
        sliding_window or 0,
        float(softcap or 0.0),
        query.stride(0),
        query.stride(1),
        out.stride(0),
        out.stride(1),
        kv_cache.stride(0),
        kv_cache.stride(1),
        kv_cache.stride(2),
        kv_cache.stride(3),
        block_tables.stride(0),
        NUM_HEADS=num_heads,
        NUM_GROUP=group,
        GROUP_PAD=group_pad,
        HEAD_DIM=head_dim,
        BLOCK_SIZE=block_size,
        BLOCK_N=block_n,
        NUM_SPLITS=num_splits,
        HAS_WINDOW=bool(sliding_window),
        HAS_SOFTCAP=bool(softcap),
        DOT_PRECISION=precision,
        DOT_FP32=upcast,
        KV_CAST=kv_cache.dtype != query.dtype,
        HAS_SCALE=kv_scale is not None,
        KV_F16=kv_f16,
        FP8_PATH=path,
        CVT_BITS=fp8_cvt_bits and kv_f16,
        num_warps=num_warps,
        num_stages=num_stages,
    )
    if num_splits > 1:
        _decode_reduce_kernel[(num_seqs, num_heads)](
            out,
            part_out,
            part_m,
            part_l,
            out.stride(0),
            out.stride(1),
            NUM_HEADS=num_heads,
            HEAD_DIM=head_dim,
            NUM_SPLITS=num_splits,
            SPLITS_PAD=triton.next_power_of_2(num_splits),
            num_warps=4,
        )
    return out
