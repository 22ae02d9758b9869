"""RMSNorm (optionally after the residual add) in one Triton kernel.

The torch layer (``layers/rmsnorm.py``) runs, per norm, up to five kernels: the residual add,
``x.float()``, ``rms_norm``, ``.to(dtype)`` and the weight multiply, each reading and writing
the whole activation. At decode batch sizes a row is a few KB, so every one of them is
launch- and memory-latency-bound; one kernel that reads ``x`` (and ``residual``) once and writes
the results once does the same work in a single pass.

Rounding follows the torch layer (see ``_rounding.py``): the residual sum is rounded to the
input dtype; mean of squares, ``rsqrt(mean + eps)`` and the scaling are float32; the normalized
row is rounded to the input dtype and then multiplied by ``weight`` as torch's elementwise
multiply does (float32 product, rounded to the promoted dtype). ``1/rms`` itself can be 1
float32 ulp off torch's: the sum of squares is reduced in another order, and ``tl.math.rsqrt``
is approximate on a GPU (``rsqrt.approx``; numpy's ``1/sqrt`` in the interpreter). On an H200
against torch's CUDA path it agrees far better than a correctly rounded ``1/sqrt``
(``[240, 1024]`` float32: 927 vs 56,198 of 245,760 values differ, by 1 ulp). In bfloat16 such
a difference flips the rounding of a few outputs: 8 of 245,760 there, at most 2 bf16 ulps
after the weight multiply (a 1-ulp flip of the normalized value is under 2 ulps of its
product with the weight).
"""

from __future__ import annotations

from typing import overload

import torch
import triton
import triton.language as tl

from pagedllm.kernels._rounding import launch_options, round_to


@triton.jit
def _rms_norm_kernel(
    x_ptr,
    res_ptr,
    w_ptr,
    out_ptr,
    res_out_ptr,
    rows_per_outer,
    stride_xo,
    stride_xi,
    stride_ro,
    stride_ri,
    stride_oo,
    stride_oi,
    stride_so,
    stride_si,
    n_cols,
    eps,
    BLOCK: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
):
    # One program per row. Rows are addressed as (outer, inner) so that per-head rows of a
    # strided [T, heads, head_dim] view (a column slice of the qkv output) need no copy.
    row = tl.program_id(0).to(tl.int64)
    outer = row // rows_per_outer
    inner = row % rows_per_outer
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    dtype = x_ptr.dtype.element_ty
    x = tl.load(x_ptr + outer * stride_xo + inner * stride_xi + cols, mask=mask, other=0.0)
    x = x.to(tl.float32)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + outer * stride_ro + inner * stride_ri + cols, mask=mask, other=0.0)
        x = round_to(x + r.to(tl.float32), dtype)  # torch's add in the model dtype
        tl.store(res_out_ptr + outer * stride_so + inner * stride_si + cols, x, mask=mask)
    # rsqrt: on a GPU the same approximate instruction as torch's CUDA rms_norm (rsqrtf)
    rstd = tl.math.rsqrt(tl.sum(x * x, axis=0) / n_cols + eps)
    normed = round_to(x * rstd, dtype)  # F.rms_norm(x.float()).to(x.dtype)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    out_dtype = out_ptr.dtype.element_ty
    y = round_to(normed * w, out_dtype)  # weight * normed, one rounding like torch's mul
    tl.store(out_ptr + outer * stride_oo + inner * stride_oi + cols, y, mask=mask)


def _as_rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a 3-D ``[outer, inner, N]`` view (a copy only for >3-D non-viewable input)."""
    if t.dim() == 1:
        return t.view(1, 1, -1)
    if t.dim() == 2:
        return t.unsqueeze(1)
    if t.dim() == 3:
        return t
    return t.reshape(-1, t.shape[-2], t.shape[-1])


def _check(name: str, t: torch.Tensor, shape: torch.Size, dtype: torch.dtype) -> None:
    """The kernel loads rows as vectors: the last dimension must be contiguous."""
    if t.shape != shape or t.dtype != dtype:
        raise ValueError(f"{name} must be {tuple(shape)} {dtype}, got {tuple(t.shape)} {t.dtype}")
    if t.stride(-1) != 1:
        raise ValueError(f"{name} must be contiguous in its last dimension")


@overload
def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    residual: None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor: ...


@overload
def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    residual: torch.Tensor,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]: ...


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    residual: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm of ``x`` over its last dimension, scaled by ``weight`` ``[N]``.

    With ``residual`` (same shape and dtype as ``x``) the rows are ``x + residual`` (rounded
    to ``x.dtype``) and ``(normed, x + residual)`` is returned, the sum in a new tensor;
    otherwise just ``normed``. ``x`` may be any strided tensor whose last dimension is
    contiguous, e.g. ``[T, heads, head_dim]`` per-head rows of a qkv slice. ``normed`` has
    ``x``'s shape and the dtype of ``weight * x``; it is written to ``out`` when given (its
    last dimension contiguous; above 3-D it must be viewable as ``[-1, x.shape[-2], N]``).
    Launch only: no host sync and no data-dependent shapes (safe under CUDA-graph capture).
    """
    n_cols = x.shape[-1]
    _check("x", x, x.shape, x.dtype)
    _check("weight", weight, torch.Size([n_cols]), weight.dtype)
    out_dtype = torch.promote_types(x.dtype, weight.dtype)
    if out is None:
        out = torch.empty(x.shape, dtype=out_dtype, device=x.device)
    _check("out", out, x.shape, out_dtype)
    summed = None
    if residual is not None:
        _check("residual", residual, x.shape, x.dtype)
        summed = torch.empty_like(x, memory_format=torch.contiguous_format)
    if x.numel() > 0:
        _launch(x, weight, eps, residual, out, summed)
    return out if summed is None else (out, summed)


def _launch(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    residual: torch.Tensor | None,
    out: torch.Tensor,
    summed: torch.Tensor | None,
) -> None:
    x3, out3 = _as_rows(x), _as_rows(out)
    # Without a residual the kernel never touches these; x stands in for the pointers.
    res3 = _as_rows(residual) if residual is not None else x3
    sum3 = _as_rows(summed) if summed is not None else x3
    n_cols = x.shape[-1]
    block = triton.next_power_of_2(n_cols)
    _rms_norm_kernel[(x3.shape[0] * x3.shape[1],)](
        x3,
        res3,
        weight,
        out3,
        sum3,
        x3.shape[1],
        x3.stride(0),
        x3.stride(1),
        res3.stride(0),
        res3.stride(1),
        out3.stride(0),
        out3.stride(1),
        sum3.stride(0),
        sum3.stride(1),
        n_cols,
        eps,
        BLOCK=block,
        HAS_RESIDUAL=residual is not None,
        **launch_options(block),
    )
