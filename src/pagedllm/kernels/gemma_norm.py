"""Gemma's RMSNorm (``x / rms(x) * (1 + weight)``), alone or fused with the residual stream
around it, in one Triton kernel.

Gemma's decoder layer has "sandwich" norms: each branch output is normalized
(``post_attention_layernorm`` / ``post_feedforward_layernorm``), added to the residual, and
the sum is normalized again in front of the next branch (``pre_feedforward_layernorm``, the
next layer's ``input_layernorm``, or the final norm). In torch each norm is ~10 kernels
(``x.float()``, pow, mean, add, rsqrt, mul, ``1 + w.float()``, mul, cast) and the add one
more; ``gemma_add_rms_norm`` does the norm, the add and the next norm in one pass over the
row, and ``gemma_scale_rms_norm`` the embedding scale and the first layer's norm.

Rounding is Hugging Face's ``Gemma2RMSNorm`` / ``Gemma3RMSNorm`` (and ``GemmaRMSNorm`` in
``layers/rmsnorm.py``): ``x`` in float32, ``x * rsqrt(mean(x^2) + eps)`` and
``(1 + w.float())`` each in float32, their product in float32, *then* one cast to the model
dtype (Llama casts before the weight multiply). The residual add and the embedding scale are
torch ops in the model dtype, so they round once more, exactly as here. As in
``fused_norm.py``, ``1/rms`` may be 1 float32 ulp off torch's (another summation order;
``rsqrt.approx`` on a GPU like torch's ``rsqrtf``), which now and then flips a bf16 rounding
by 1 ulp; the sums and scaled embeddings are exact given their inputs.
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from pagedllm.kernels._common import interpreting
from pagedllm.kernels._rounding import launch_options, round_to
from pagedllm.kernels.fused_norm import _as_rows, _check

_PLAIN, _ADD, _SCALE = 0, 1, 2
_INTERPRETER_ROWS = 32  # the interpreter's cost is per program, not per row


@triton.jit
def _gemma_norm(v, w_ptr, cols, mask, inv_n, eps, DTYPE: tl.constexpr):
    """Gemma RMSNorm of the float32 rows ``v`` ``[ROWS, BLOCK]``, rounded to ``DTYPE``
    (returned as float32)."""
    # torch's CUDA mean is sum * float32(1/N) (MeanOps' factor), not sum / N
    rstd = tl.math.rsqrt(tl.sum(v * v, axis=1) * inv_n + eps)[:, None]
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    return round_to((v * rstd) * (1.0 + w[None, :]), DTYPE)


@triton.jit
def _gemma_norm_kernel(
    x_ptr,
    res_ptr,
    w_ptr,
    w2_ptr,
    out_ptr,
    sum_ptr,
    n_rows,
    rows_per_outer,
    stride_xo,
    stride_xi,
    stride_oo,
    stride_oi,
    stride_r,
    n_cols,
    inv_n,
    eps,
    eps2,
    scale,
    BLOCK: tl.constexpr,
    ROWS: tl.constexpr,
    MODE: tl.constexpr,
):
    # ROWS rows per program (1 on a GPU; more in the interpreter, whose cost is per program).
    # Rows are (outer, inner) so that per-head rows of a strided [T, heads, head_dim] view
    # need no copy (plain mode); the residual and sum rows of the other modes are [T, hidden]
    # with row stride ``stride_r``.
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    outer = (rows // rows_per_outer)[:, None]
    inner = (rows % rows_per_outer)[:, None]
    cols = tl.arange(0, BLOCK)
    col_ok = cols < n_cols
    mask = (rows < n_rows)[:, None] & col_ok[None, :]
    dtype = x_ptr.dtype.element_ty
    x = tl.load(x_ptr + outer * stride_xo + inner * stride_xi + cols[None, :], mask=mask, other=0.0)
    x = x.to(tl.float32)
    if MODE == 1:
        # residual + post_norm(x), in the model dtype; then the next norm of that sum
        offs = rows[:, None] * stride_r + cols[None, :]
        r = tl.load(res_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        s = round_to(r + _gemma_norm(x, w_ptr, cols, col_ok, inv_n, eps, dtype), dtype)
        tl.store(sum_ptr + offs, s, mask=mask)
        y = _gemma_norm(s, w2_ptr, cols, col_ok, inv_n, eps2, dtype)
    elif MODE == 2:
        offs = rows[:, None] * stride_r + cols[None, :]
        s = round_to(x * scale, dtype)  # embedding * normalizer
        tl.store(sum_ptr + offs, s, mask=mask)
        y = _gemma_norm(s, w_ptr, cols, col_ok, inv_n, eps, dtype)
    else:
        y = _gemma_norm(x, w_ptr, cols, col_ok, inv_n, eps, dtype)
    tl.store(out_ptr + outer * stride_oo + inner * stride_oi + cols[None, :], y, mask=mask)


def gemma_rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Gemma RMSNorm of ``x`` over its last dimension: ``x / rms(x) * (1 + weight)``.

    ``x`` may be any strided tensor whose last dimension is contiguous (e.g. the per-head
    ``[T, heads, head_dim]`` rows of a qkv slice); ``weight`` is ``[N]``. The result has
    ``x``'s shape and dtype, in ``out`` when given (last dimension contiguous). Launch only:
    no host sync (safe under CUDA-graph capture).
    """
    n_cols = x.shape[-1]
    _check("x", x, x.shape, x.dtype)
    _check("weight", weight, torch.Size([n_cols]), weight.dtype)
    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    _check("out", out, x.shape, x.dtype)
    if x.numel() > 0:
        x3, out3 = _as_rows(x), _as_rows(out)
        _launch(x3, out3, x3, x3, (weight, weight), (eps, eps), 1.0, _PLAIN)
    return out


def gemma_add_rms_norm(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    next_weight: torch.Tensor,
    eps: float,
    next_eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A branch's post-norm, the residual add and the next norm: returns
    ``(norm(summed, next_weight), summed)`` with ``summed = residual + norm(x, weight)``.

    ``x`` and ``residual`` are ``[T, N]`` of one dtype (rows contiguous; ``x`` may have a
    row stride), the weights ``[N]``. Both results are new contiguous tensors.
    """
    _check_rows("x", x)
    n_cols = x.shape[-1]
    _check("residual", residual, x.shape, x.dtype)
    _check("weight", weight, torch.Size([n_cols]), weight.dtype)
    _check("next_weight", next_weight, torch.Size([n_cols]), next_weight.dtype)
    residual = residual.contiguous()
    summed = torch.empty_like(residual)
    out = torch.empty_like(residual)
    if x.numel() > 0:
        x3, out3 = x.unsqueeze(1), out.unsqueeze(1)
        _launch(x3, out3, residual, summed, (weight, next_weight), (eps, next_eps), 1.0, _ADD)
    return out, summed


def gemma_scale_rms_norm(
    x: torch.Tensor, scale: float, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gemma's scaled embedding and the first norm: returns ``(norm(scaled, weight), scaled)``
    with ``scaled = x * scale`` rounded to ``x.dtype`` (``x`` ``[T, N]``, rows contiguous)."""
    _check_rows("x", x)
    _check("weight", weight, torch.Size([x.shape[-1]]), weight.dtype)
    scaled = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    out = torch.empty_like(scaled)
    if x.numel() > 0:
        x3, out3 = x.unsqueeze(1), out.unsqueeze(1)
        _launch(x3, out3, x3, scaled, (weight, weight), (eps, eps), float(scale), _SCALE)
    return out, scaled


def _check_rows(name: str, x: torch.Tensor) -> None:
    if x.dim() != 2:
        raise ValueError(f"{name} must be [T, N], got {tuple(x.shape)}")
    _check(name, x, x.shape, x.dtype)


def _launch(
    x3: torch.Tensor,
    out3: torch.Tensor,
    res: torch.Tensor,
    summed: torch.Tensor,
    weights: tuple[torch.Tensor, torch.Tensor],
    eps: tuple[float, float],
    scale: float,
    mode: int,
) -> None:
    """``x3``/``out3`` are ``[outer, inner, N]`` row views; ``res``/``summed`` contiguous
    ``[T, N]`` (unread in plain mode, where ``x3`` stands in for them)."""
    n_cols = x3.shape[-1]
    n_rows = x3.shape[0] * x3.shape[1]
    block = triton.next_power_of_2(n_cols)
    rows = _INTERPRETER_ROWS if interpreting() else 1
    _gemma_norm_kernel[(triton.cdiv(n_rows, rows),)](
        x3,
        res,
        weights[0],
        weights[1],
        out3,
        summed,
        n_rows,
        x3.shape[1],
        x3.stride(0),
        x3.stride(1),
        out3.stride(0),
        out3.stride(1),
        n_cols,  # the residual/sum row stride
        n_cols,
        float(np.float32(1.0) / np.float32(n_cols)),
        eps[0],
        eps[1],
        scale,
        BLOCK=block,
        ROWS=rows,
        MODE=mode,
        **launch_options(block),
    )
