"""Rotary position embedding (NeoX ``rotate_half``) for q and k in one Triton kernel, optionally
preceded by Qwen3's or Gemma 3's per-head RMSNorm (``qk_norm_rotary``).

The torch layer (``layers/rotary.py``) gathers cos/sin for the batch, casts them, and runs
mul/neg/cat/mul/add separately for q and for k, each op a kernel reading and writing the
whole tensor; Qwen3 adds two per-head RMSNorms of five kernels each before that. These are all
memory-bound, so one launch that reads q, k and the cos/sin rows once and writes the rotated
heads once replaces them.

Grid: one program per (token, block of heads); the head blocks of q come first, then those of
k, so q and k share a launch and each program loads its token's cos/sin once. Each head is
handled as its two halves ``x1 = x[:D/2]``, ``x2 = x[D/2:]``, so ``rotate_half`` is free:
``out1 = x1*cos1 - x2*sin1``, ``out2 = x2*cos2 + x1*sin2``.

Rounding follows the torch layers (``_rounding.py``): cos/sin are cast to the activation dtype
first, each product and the sum are rounded to it as torch's separate ops round them; the
per-head norm rounds as ``kernels/fused_norm.py`` does.
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from pagedllm.kernels._rounding import launch_options, round_to


@triton.jit
def _norm_rotate_heads(
    src,
    stride_src_h,
    dst,
    stride_dst_h,
    first_head,
    num_heads,
    w_ptr,
    cos1,
    cos2,
    sin1,
    sin2,
    eps,
    inv_d,
    half,
    HALF_PAD: tl.constexpr,
    BLOCK_H: tl.constexpr,
    NORM: tl.constexpr,
    GEMMA: tl.constexpr,
):
    # src/dst point at this token's first head; heads [first_head, first_head + BLOCK_H).
    dtype = src.dtype.element_ty
    heads = first_head + tl.arange(0, BLOCK_H)
    offs = tl.arange(0, HALF_PAD)
    mask = (heads < num_heads)[:, None] & (offs < half)[None, :]
    ptrs = src + heads[:, None] * stride_src_h + offs[None, :]
    x1 = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(ptrs + half, mask=mask, other=0.0).to(tl.float32)
    if NORM:
        sum_sq = tl.sum(x1 * x1, axis=1) + tl.sum(x2 * x2, axis=1)
        w1 = tl.load(w_ptr + offs, mask=offs < half, other=0.0).to(tl.float32)[None, :]
        w2 = tl.load(w_ptr + half + offs, mask=offs < half, other=0.0).to(tl.float32)[None, :]
        if GEMMA:
            # as in gemma_norm.py: mean as sum * (1/D), (x * rstd) * (1 + w), one rounding
            rstd = tl.math.rsqrt(sum_sq * inv_d + eps)[:, None]
            x1 = round_to((x1 * rstd) * (1.0 + w1), dtype)
            x2 = round_to((x2 * rstd) * (1.0 + w2), dtype)
        else:
            rstd = tl.math.rsqrt(sum_sq / (2 * half) + eps)[:, None]  # as in fused_norm.py
            x1 = round_to(round_to(x1 * rstd, dtype) * w1, dtype)
            x2 = round_to(round_to(x2 * rstd, dtype) * w2, dtype)
    # torch: x*cos + rotate_half(x)*sin, every op rounded to the activation dtype.
    out1 = round_to(round_to(x1 * cos1, dtype) - round_to(x2 * sin1, dtype), dtype)
    out2 = round_to(round_to(x2 * cos2, dtype) + round_to(x1 * sin2, dtype), dtype)
    out_ptrs = dst + heads[:, None] * stride_dst_h + offs[None, :]
    tl.store(out_ptrs, out1, mask=mask)
    tl.store(out_ptrs + half, out2, mask=mask)


@triton.jit
def _rotary_kernel(
    pos_ptr,
    q_ptr,
    k_ptr,
    q_out_ptr,
    k_out_ptr,
    cos_ptr,
    sin_ptr,
    q_w_ptr,
    k_w_ptr,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_qot,
    stride_qoh,
    stride_kot,
    stride_koh,
    stride_cos,
    stride_sin,
    num_q_heads,
    num_k_heads,
    q_blocks,
    half,
    eps,
    inv_d,
    HALF_PAD: tl.constexpr,
    BLOCK_H: tl.constexpr,
    NORM: tl.constexpr,
    GEMMA: tl.constexpr,
):
    tok = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    dtype = q_ptr.dtype.element_ty
    pos = tl.load(pos_ptr + tok).to(tl.int64)
    offs = tl.arange(0, HALF_PAD)
    dmask = offs < half
    # The cached tables are float32; torch casts the gathered rows to the activation dtype.
    cos_row = cos_ptr + pos * stride_cos + offs
    sin_row = sin_ptr + pos * stride_sin + offs
    cos1 = round_to(tl.load(cos_row, mask=dmask, other=0.0).to(tl.float32), dtype)[None, :]
    cos2 = round_to(tl.load(cos_row + half, mask=dmask, other=0.0).to(tl.float32), dtype)[None, :]
    sin1 = round_to(tl.load(sin_row, mask=dmask, other=0.0).to(tl.float32), dtype)[None, :]
    sin2 = round_to(tl.load(sin_row + half, mask=dmask, other=0.0).to(tl.float32), dtype)[None, :]
    if blk < q_blocks:
        _norm_rotate_heads(
            q_ptr + tok * stride_qt,
            stride_qh,
            q_out_ptr + tok * stride_qot,
            stride_qoh,
            blk * BLOCK_H,
            num_q_heads,
            q_w_ptr,
            cos1,
            cos2,
            sin1,
            sin2,
            eps,
            inv_d,
            half,
            HALF_PAD,
            BLOCK_H,
            NORM,
            GEMMA,
        )
    else:
        _norm_rotate_heads(
            k_ptr + tok * stride_kt,
            stride_kh,
            k_out_ptr + tok * stride_kot,
            stride_koh,
            (blk - q_blocks) * BLOCK_H,
            num_k_heads,
            k_w_ptr,
            cos1,
            cos2,
            sin1,
            sin2,
            eps,
            inv_d,
            half,
            HALF_PAD,
            BLOCK_H,
            NORM,
            GEMMA,
        )


def _heads_view(name: str, x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """``x`` ``[T, heads * head_dim]`` (or ``[T, heads, head_dim]``) as a 3-D strided view."""
    if x.dim() == 2:
        if x.shape[1] % head_dim:
            raise ValueError(f"{name} width {x.shape[1]} is not a multiple of {head_dim}")
        x = x.view(x.shape[0], x.shape[1] // head_dim, head_dim)  # a view even of a qkv slice
    if x.dim() != 3 or x.shape[2] != head_dim:
        raise ValueError(f"{name} must be [T, heads * {head_dim}], got {tuple(x.shape)}")
    if x.stride(-1) != 1:
        raise ValueError(f"{name} must be contiguous in its last dimension")
    return x


def _check_table(name: str, table: torch.Tensor, head_dim: int) -> None:
    if table.dim() != 2 or table.shape[1] != head_dim or table.stride(1) != 1:
        raise ValueError(f"{name} must be a row-contiguous [max_pos, {head_dim}] table")


def _check_weight(name: str, weight: torch.Tensor, head_dim: int, dtype: torch.dtype) -> None:
    if weight.shape != (head_dim,) or weight.dtype != dtype or weight.stride(0) != 1:
        raise ValueError(
            f"{name} must be a contiguous [{head_dim}] {dtype} tensor, "
            f"got {tuple(weight.shape)} {weight.dtype}"
        )


def apply_rotary(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    cos_cache: torch.Tensor,
    sin_cache: torch.Tensor,
    head_dim: int,
    inplace: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """NeoX RoPE on ``q`` ``[T, H*D]`` and ``k`` ``[T, KVH*D]`` at ``positions`` ``[T]``.

    ``q``/``k`` may be strided row views (column slices of the qkv output); only their last
    dimension must be contiguous. ``cos_cache``/``sin_cache`` are ``[max_pos, D]`` tables
    (``cat(freqs, freqs)`` layout, any float dtype). Returns new contiguous tensors shaped
    like ``q``/``k``, or ``(q, k)`` rotated in place with ``inplace=True``. Positions are not
    bounds-checked (no host sync: safe under CUDA-graph capture).
    """
    return _launch(positions, q, k, cos_cache, sin_cache, head_dim, inplace, None)


def qk_norm_rotary(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    cos_cache: torch.Tensor,
    sin_cache: torch.Tensor,
    head_dim: int,
    q_weight: torch.Tensor,
    k_weight: torch.Tensor,
    eps: float,
    inplace: bool = False,
    gemma: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen3: per-head RMSNorm (``q_weight``/``k_weight`` ``[D]``, dtype of q) then RoPE.

    Same as ``rms_norm`` over each head followed by ``apply_rotary``, in one launch. With
    ``gemma=True`` the norm is Gemma 3's (``gemma_norm.gemma_rms_norm``: scaled by
    ``1 + weight`` in float32 before the one cast).
    """
    _check_weight("q_weight", q_weight, head_dim, q.dtype)
    _check_weight("k_weight", k_weight, head_dim, q.dtype)
    return _launch(
        positions, q, k, cos_cache, sin_cache, head_dim, inplace, (q_weight, k_weight, eps), gemma
    )


def _launch(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    cos_cache: torch.Tensor,
    sin_cache: torch.Tensor,
    head_dim: int,
    inplace: bool,
    norm: tuple[torch.Tensor, torch.Tensor, float] | None,
    gemma: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    if head_dim % 2:
        raise ValueError(f"head_dim must be even, got {head_dim}")
    if k.dtype != q.dtype:
        raise ValueError(f"q ({q.dtype}) and k ({k.dtype}) must share a dtype")
    q3, k3 = _heads_view("q", q, head_dim), _heads_view("k", k, head_dim)
    num_tokens = q3.shape[0]
    if k3.shape[0] != num_tokens or positions.shape != (num_tokens,):
        raise ValueError(
            f"q {tuple(q.shape)}, k {tuple(k.shape)} and positions {tuple(positions.shape)} "
            "must have the same number of tokens"
        )
    if positions.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"positions must be int32 or int64, got {positions.dtype}")
    _check_table("cos_cache", cos_cache, head_dim)
    _check_table("sin_cache", sin_cache, head_dim)
    q_out = q if inplace else torch.empty(q.shape, dtype=q.dtype, device=q.device)
    k_out = k if inplace else torch.empty(k.shape, dtype=k.dtype, device=k.device)
    if num_tokens == 0:
        return q_out, k_out
    qo3, ko3 = q_out.view(q3.shape), k_out.view(k3.shape)
    num_q_heads, num_k_heads = q3.shape[1], k3.shape[1]
    half = head_dim // 2
    half_pad = triton.next_power_of_2(half)
    # ~2K values per program: all heads of a token for small models, fewer for big ones.
    block_h = min(triton.next_power_of_2(max(num_q_heads, num_k_heads)), max(1, 1024 // half_pad))
    q_blocks = triton.cdiv(num_q_heads, block_h)
    k_blocks = triton.cdiv(num_k_heads, block_h)
    q_w, k_w, eps = norm if norm is not None else (q3, k3, 0.0)  # unread without NORM
    _rotary_kernel[(num_tokens, q_blocks + k_blocks)](
        positions,
        q3,
        k3,
        qo3,
        ko3,
        cos_cache,
        sin_cache,
        q_w,
        k_w,
        q3.stride(0),
        q3.stride(1),
        k3.stride(0),
        k3.stride(1),
        qo3.stride(0),
        qo3.stride(1),
        ko3.stride(0),
        ko3.stride(1),
        cos_cache.stride(0),
        sin_cache.stride(0),
        num_q_heads,
        num_k_heads,
        q_blocks,
        half,
        eps,
        float(np.float32(1.0) / np.float32(head_dim)),  # torch's CUDA mean factor (Gemma)
        HALF_PAD=half_pad,
        BLOCK_H=block_h,
        NORM=norm is not None,
        GEMMA=gemma,
        **launch_options(block_h * half_pad),
    )
    return q_out, k_out
