"""Paged prefill/extend attention: chunked prefill over a cached prefix (FlashAttention-2 style).

Sequence ``i`` has ``query_len`` new queries that sit at the last positions of a context of
``seq_len`` tokens; query ``j`` is at position ``seq_len - query_len + j`` and sees keys at
positions ``<=`` its own (and, with a sliding window ``w``, ``> position - w``). All keys, both
the cached prefix and the rows written this step, are read from the pages, so K/V must be
written (``reshape_and_cache``) before this runs.

Grid: ``(num_prefill_seqs, cdiv(max_query_len, BLOCK_M), num_heads)``; tiles past a sequence's
query length exit at once. That avoids a host-side per-program map (and the host sync that
building it would need) at the cost of a few empty programs for ragged batches.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from pagedllm.kernels._common import dot_options, fp16_dots_for_fp8
from pagedllm.kernels._softcap import soft_cap

LOG2E = math.log2(math.e)


@triton.jit
def _extend_tile_loop(
    acc,
    l_i,
    m_i,
    q,
    k_base,
    bt_row,
    pos_m,
    lo,
    hi,
    qk_scale,
    sliding_window,
    softcap,
    stride_ckv,
    stride_cb,
    stride_cs,
    HEAD_DIM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    DOT_FP32: tl.constexpr,
    KV_CAST: tl.constexpr,
):
    """Online softmax over key tiles ``[lo, hi)``; ``MASKED`` adds causal/window/bound masks."""
    offs_d = tl.arange(0, HEAD_DIM)
    for start in range(lo, hi, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        nmask = offs_n < hi
        if MASKED:
            blk = tl.load(bt_row + offs_n // BLOCK_SIZE, mask=nmask, other=0).to(tl.int64)
        else:  # whole tiles below the diagonal: every key exists, no predicated loads
            blk = tl.load(bt_row + offs_n // BLOCK_SIZE).to(tl.int64)
        kv_offs = (blk * stride_cb + (offs_n % BLOCK_SIZE) * stride_cs)[:, None] + offs_d[None, :]
        if MASKED:
            k = tl.load(k_base + kv_offs, mask=nmask[:, None], other=0.0)
        else:
            k = tl.load(k_base + kv_offs)
        if KV_CAST:  # fp8 (or another float) pages: convert in registers (scales: the caller)
            k = k.to(q.dtype)
        if DOT_FP32:
            k = k.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        if HAS_SOFTCAP:
            s = soft_cap(s, softcap)
        if MASKED:
            visible = (offs_n[None, :] <= pos_m[:, None]) & nmask[None, :]
            if HAS_WINDOW:
                visible = visible & (offs_n[None, :] > pos_m[:, None] - sliding_window)
            s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        if MASKED:
            # A row may see no key of a tile (sliding window): keep exp2 arguments finite.
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:
            m_safe = m_new  # unmasked tiles: every row sees every key, so m_new is finite
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if MASKED:
            v = tl.load(k_base + stride_ckv + kv_offs, mask=nmask[:, None], other=0.0)
        else:
            v = tl.load(k_base + stride_ckv + kv_offs)
        if KV_CAST:
            v = v.to(q.dtype)
        if DOT_FP32:
            v = v.to(tl.float32)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


# Values that change from step to step are not specialized on (Triton would compile a
# variant for each "== 1" / "% 16 == 0" case: seconds of JIT in the middle of serving).
@triton.jit(do_not_specialize=["seq_offset", "stride_bt", "sliding_window", "softcap"])
def _paged_extend_kernel(
    q_ptr,
    cache_ptr,
    block_tables_ptr,
    seq_lens_ptr,
    query_start_loc_ptr,
    out_ptr,
    scale_ptr,
    qk_scale,
    sliding_window,
    softcap,
    seq_offset,
    stride_qt,
    stride_qh,
    stride_ot,
    stride_oh,
    stride_ckv,
    stride_cb,
    stride_cs,
    stride_ch,
    stride_bt,
    NUM_GROUP: tl.constexpr,
    NUM_PACK: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    DOT_FP32: tl.constexpr,
    KV_CAST: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    KV_F16: tl.constexpr,
):
    seq = seq_offset + tl.program_id(0)
    # Causal work grows with the tile index: the heaviest tiles start first, so the last wave
    # of programs on the SMs is made of short ones (less tail at long contexts).
    m_tile = tl.num_programs(1) - 1 - tl.program_id(1)
    # A tile's rows are (query, head) pairs: NUM_PACK query heads of one KV head side by side
    # (GQA packing), so each K/V tile read from the pages serves NUM_PACK heads.
    head_base = tl.program_id(2) * NUM_PACK
    q_start = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    if m_tile * (BLOCK_M // NUM_PACK) < q_len:
        seq_len = tl.load(seq_lens_ptr + seq)
        prefix = seq_len - q_len
        offs_r = m_tile * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_m = offs_r // NUM_PACK  # each row's query index in the chunk
        heads = head_base + offs_r % NUM_PACK  # each row's query head
        offs_d = tl.arange(0, HEAD_DIM)
        mmask = offs_m < q_len
        rows = (q_start + offs_m).to(tl.int64)
        q_offs = rows[:, None] * stride_qt + heads[:, None] * stride_qh + offs_d[None, :]
        q = tl.load(q_ptr + q_offs, mask=mmask[:, None], other=0.0)
        if DOT_FP32:
            q = q.to(tl.float32)
        if KV_F16:  # fp8 pages under a bf16 query: both dots in fp16 (see the wrapper)
            q = tl.clamp(q.to(tl.float32), -65504.0, 65504.0).to(tl.float16)
        if HAS_SCALE:  # fp8 pages hold k / k_scale: fold k_scale into the score scale
            qk_scale = qk_scale * tl.load(scale_ptr)
        pos_m = prefix + offs_m
        first_pos = prefix + m_tile * (BLOCK_M // NUM_PACK)
        # Keys past the tile's last query position are never visible.
        hi = tl.minimum(first_pos + BLOCK_M // NUM_PACK, seq_len)
        bt_row = block_tables_ptr + seq.to(tl.int64) * stride_bt
        k_base = cache_ptr + (head_base // NUM_GROUP) * stride_ch

        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
        if HAS_WINDOW:
            lo = tl.maximum(first_pos - sliding_window + 1, 0)
            acc, l_i, m_i = _extend_tile_loop(
                acc, l_i, m_i, q, k_base, bt_row, pos_m, lo, hi, qk_scale, sliding_window, softcap,
                stride_ckv, stride_cb, stride_cs,
                HEAD_DIM, BLOCK_SIZE, BLOCK_N, True, HAS_WINDOW, HAS_SOFTCAP, DOT_PRECISION, DOT_FP32,
                KV_CAST,
            )  # fmt: skip
        else:
            # Whole tiles of keys at or before the tile's first query position are visible to
            # every row: no mask there; only the diagonal tiles pay for masking.
            mid = ((first_pos + 1) // BLOCK_N) * BLOCK_N
            acc, l_i, m_i = _extend_tile_loop(
                acc, l_i, m_i, q, k_base, bt_row, pos_m, 0, mid, qk_scale, sliding_window, softcap,
                stride_ckv, stride_cb, stride_cs,
                HEAD_DIM, BLOCK_SIZE, BLOCK_N, False, HAS_WINDOW, HAS_SOFTCAP, DOT_PRECISION, DOT_FP32,
                KV_CAST,
            )  # fmt: skip
            acc, l_i, m_i = _extend_tile_loop(
                acc, l_i, m_i, q, k_base, bt_row, pos_m, mid, hi, qk_scale, sliding_window, softcap,
                stride_ckv, stride_cb, stride_cs,
                HEAD_DIM, BLOCK_SIZE, BLOCK_N, True, HAS_WINDOW, HAS_SOFTCAP, DOT_PRECISION, DOT_FP32,
                KV_CAST,
            )  # fmt: skip
        if HAS_SCALE:  # the output is linear in V: apply v_scale once
            acc = acc * tl.load(scale_ptr + 1)
        l_safe = tl.where(l_i > 0.0, l_i, 1.0)
        out = acc / l_safe[:, None]
        tl.store(
            out_ptr + rows[:, None] * stride_ot + heads[:, None] * stride_oh + offs_d[None, :],
            out.to(out_ptr.dtype.element_ty),
            mask=mmask[:, None],
        )


def _default_tiles(head_dim: int, dtype: torch.dtype, on_gpu: bool) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for this head dim and dtype."""
    if not on_gpu:
        return 32, 32, 4, 1  # interpreter: small tiles keep numpy temporaries small
    if dtype == torch.float32:
        return 64, 32, 4, 2  # 4-byte tiles: stay well inside shared memory
    if head_dim <= 64:
        return 128, 64, 4, 3
    if head_dim <= 128:
        # H200 sweep (benchmarks/RESULTS.md): 423 TFLOP/s at 16k new over 16k cached tokens
        # vs 328 for (128, 64, 8, 2); Q + 3 stages of K/V tiles = 224 KiB of shared memory
        return 128, 128, 8, 3
    return 128, 64, 8, 2  # d 256 (Gemma): 128-key tiles in 3 stages would not fit


def paged_extend_attention(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    scale: float,
    max_query_len: int,
    seq_offset: int = 0,
    num_seqs: int | None = None,
    sliding_window: int | None = None,
    out: torch.Tensor | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
    softcap: float | None = None,
    pack_gqa: bool = False,
    kv_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention of variable-length query chunks over their paged contexts.

    Handles sequences ``seq_offset .. seq_offset + num_seqs`` of the batch (their rows of
    ``query`` ``[T, H, d]`` are given by the absolute ``query_start_loc``); rows of other
    sequences in ``out`` are left untouched. ``max_query_len`` is an upper bound on those
    sequences' query lengths (it sizes the grid). Returns ``out`` (``[T, H, d]``).
    ``pack_gqa`` puts the query heads of one KV head in the same tile, so each K/V page read
    serves all of them (default off: on the H200 the packed 128 x 128 tile ran 6% slower than
    one head per tile at 16k new over 16k cached tokens, 8.30 vs 7.80 ms; prefill at these sizes
    is compute-bound, so the saved K/V reads do not pay). A float8
    ``kv_cache`` is dequantized on load with ``kv_scale`` (float32 ``[2]``; None: 1.0).
    """
    num_heads, head_dim = query.shape[1], query.shape[2]
    out = torch.empty_like(query) if out is None else out
    if num_seqs is None:
        num_seqs = seq_lens.shape[0] - seq_offset
    if num_seqs <= 0 or max_query_len <= 0:
        return out
    num_kv_heads, block_size = kv_cache.shape[3], kv_cache.shape[2]
    dm, dn, dw, ds = _default_tiles(head_dim, query.dtype, query.is_cuda)
    block_m = block_m or dm
    block_n = block_n or dn
    kv_f16 = fp16_dots_for_fp8(kv_cache.dtype, query.dtype)
    precision, upcast = dot_options(torch.float16 if kv_f16 else query.dtype)
    group = num_heads // num_kv_heads
    pack = group if pack_gqa and block_m % group == 0 else 1
    grid = (num_seqs, triton.cdiv(max_query_len * pack, block_m), num_heads // pack)
    if block_tables.stride(-1) != 1 or seq_lens.stride(0) != 1:
        # the kernels index table rows and lengths as contiguous vectors
        raise ValueError("block_tables rows and seq_lens must be contiguous")
    _paged_extend_kernel[grid](
        query,
        kv_cache,
        block_tables,
        seq_lens,
        query_start_loc,
        out,
        seq_lens if kv_scale is None else kv_scale,  # unread without a scale
        scale if softcap else scale * LOG2E,
        sliding_window or 0,
        float(softcap or 0.0),
        seq_offset,
        query.stride(0),
        query.stride(1),
        out.stride(0),
        out.stride(1),
        kv_cache.stride(0),
        kv_cache.stride(1),
        kv_cache.stride(2),
        kv_cache.stride(3),
        block_tables.stride(0),
        NUM_GROUP=group,
        NUM_PACK=pack,
        HEAD_DIM=head_dim,
        BLOCK_SIZE=block_size,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        HAS_WINDOW=bool(sliding_window),
        HAS_SOFTCAP=bool(softcap),
        DOT_PRECISION=precision,
        DOT_FP32=upcast,
        KV_CAST=kv_cache.dtype != query.dtype,
        HAS_SCALE=kv_scale is not None,
        KV_F16=kv_f16,
        num_warps=num_warps or dw,
        num_stages=num_stages or ds,
    )
    return out
