"""Write new K/V rows into their KV-cache pages (``reshape_and_cache``).

KV cache layout per layer: ``[2, num_blocks, block_size, num_kv_heads, head_dim]`` (0 = K,
1 = V). Token ``t`` of the batch goes to flat slot ``slot_mapping[t]`` = ``block * block_size +
offset``; a negative slot means "skip" (CUDA-graph padding rows).

An fp8 cache (``torch.float8_e4m3fn``) is written as ``x / scale`` saturated to +-448, with the
layer's ``kv_scale`` ``[k_scale, v_scale]`` loaded from device memory (``attention/kv_quant.py``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _reshape_and_cache_kernel(
    key_ptr,
    value_ptr,
    cache_ptr,
    slot_ptr,
    scale_ptr,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_ckv,
    stride_cb,
    stride_cs,
    stride_ch,
    block_size,
    num_kv_heads,
    HEAD_DIM: tl.constexpr,
    HEADS_PAD: tl.constexpr,
    KV_FP8: tl.constexpr,
    HAS_SCALE: tl.constexpr,
):
    # One program per token: copies all kv heads of K and V (one contiguous-ish [kvh, d] tile).
    tok = tl.program_id(0)
    slot = tl.load(slot_ptr + tok).to(tl.int64)
    if slot >= 0:
        blk = slot // block_size
        off = slot % block_size
        offs_h = tl.arange(0, HEADS_PAD)
        offs_d = tl.arange(0, HEAD_DIM)
        mask = (offs_h < num_kv_heads)[:, None]
        tok64 = tok.to(tl.int64)
        k = tl.load(
            key_ptr + tok64 * stride_kt + offs_h[:, None] * stride_kh + offs_d[None, :],
            mask=mask,
        )
        v = tl.load(
            value_ptr + tok64 * stride_vt + offs_h[:, None] * stride_vh + offs_d[None, :],
            mask=mask,
        )
        if KV_FP8:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
            if HAS_SCALE:
                k = k / tl.load(scale_ptr)
                v = v / tl.load(scale_ptr + 1)
            # saturate: a cast of a value past the e4m3 range gives NaN, not the largest value
            k = tl.minimum(tl.maximum(k, -448.0), 448.0)
            v = tl.minimum(tl.maximum(v, -448.0), 448.0)
        dst = cache_ptr + blk * stride_cb + off * stride_cs
        dst = dst + offs_h[:, None] * stride_ch + offs_d[None, :]
        tl.store(dst, k.to(cache_ptr.dtype.element_ty), mask=mask)
        tl.store(dst + stride_ckv, v.to(cache_ptr.dtype.element_ty), mask=mask)


def reshape_and_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    kv_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    kv_scale: torch.Tensor | None = None,
) -> None:
    """Scatter ``key``/``value`` ``[T, kvh, d]`` into ``kv_cache`` at ``slot_mapping`` ``[T]``.

    Rows with a negative slot are skipped. A float8 ``kv_cache`` gets ``x / kv_scale``
    (float32 ``[2]``: K, V; None: scale 1) saturated to the e4m3 range. ``head_dim`` must be a power of two and the last
    dimension of every tensor must be contiguous (the per-head rows are copied as vectors).
    """
    num_tokens, num_kv_heads, head_dim = key.shape
    if num_tokens == 0:
        return
    if value.shape != key.shape:
        raise ValueError(f"key {tuple(key.shape)} and value {tuple(value.shape)} differ in shape")
    if kv_cache.dim() != 5 or kv_cache.shape[0] != 2 or kv_cache.shape[3:] != key.shape[1:]:
        raise ValueError(
            f"kv_cache {tuple(kv_cache.shape)} must be [2, num_blocks, block_size, "
            f"{num_kv_heads}, {head_dim}]"
        )
    if head_dim & (head_dim - 1):
        raise ValueError(f"head_dim must be a power of two, got {head_dim}")
    for name, t in (("key", key), ("value", value), ("kv_cache", kv_cache)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in its last dimension")
    if slot_mapping.dim() != 1 or slot_mapping.stride(0) != 1:
        # the kernel reads slot t at base + t: a strided view would hand it other tokens' slots
        raise ValueError(f"slot_mapping must be a contiguous 1-D tensor, got strides "
                         f"{slot_mapping.stride()}")  # fmt: skip
    _reshape_and_cache_kernel[(num_tokens,)](
        key,
        value,
        kv_cache,
        slot_mapping,
        slot_mapping if kv_scale is None else kv_scale,  # unread without a scale
        key.stride(0),
        key.stride(1),
        value.stride(0),
        value.stride(1),
        kv_cache.stride(0),
        kv_cache.stride(1),
        kv_cache.stride(2),
        kv_cache.stride(3),
        kv_cache.shape[2],
        num_kv_heads,
        HEAD_DIM=head_dim,
        HEADS_PAD=triton.next_power_of_2(num_kv_heads),
        KV_FP8=kv_cache.dtype == torch.float8_e4m3fn,
        HAS_SCALE=kv_scale is not None,
        num_warps=1 if num_kv_heads * head_dim <= 512 else 4,
    )
