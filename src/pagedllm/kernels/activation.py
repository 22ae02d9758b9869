"""``act(gate) * up`` over a merged gate_up projection in one Triton kernel: SiLU (Llama,
Qwen) and GELU with the tanh approximation (Gemma's GeGLU).

The torch layers (``layers/activation.py``) run the activation and the multiply as two
kernels with an intermediate ``[T, I]`` tensor written and read back in between; this kernel
reads gate and up once and writes the product once (the op is memory-bound).

Rounding follows torch: the activation is computed in float32 and rounded to the input dtype,
then the product is a float32 multiply rounded once more (``_rounding.py``).

- SiLU: ``g / (1 + exp(-g))`` (torch's CUDA formula; ``exp`` is CUDA's ``expf`` via
  libdevice).
- GELU tanh: torch's CUDA ``GeluTanhFunctor``, ``0.5 * g * (1 + tanh(beta * (g + kappa *
  g^3)))`` with ``beta = sqrt(2/pi)`` and ``kappa = 0.044715`` as float32 constants. nvcc
  contracts ``g + kappa * g^3`` into one FMA (its default ``--fmad=true``), so the kernel
  uses ``tl.fma`` there and plain rounded operations elsewhere; ``tanh`` is libdevice's
  ``tanhf``, CUDA's own.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import triton
import triton.language as tl

from pagedllm.kernels._common import interpreting
from pagedllm.kernels._rounding import exp_f32, launch_options, round_to, tanh_f32

_BLOCK = 1024  # columns per program: large enough to stream, small enough for many programs
_INTERPRETER_ROWS = 16  # the interpreter's cost is per program, not per element
# torch: constexpr float kBeta = M_SQRT2 * M_2_SQRTPI * 0.5 (a double rounded to float)
_GELU_BETA = float(np.float32(math.sqrt(2.0) * (2.0 / math.sqrt(math.pi)) * 0.5))
_GELU_KAPPA = float(np.float32(0.044715))

SILU, GELU_TANH = 0, 1


@triton.jit
def _act_and_mul_kernel(
    x_ptr,
    out_ptr,
    stride_xt,
    stride_ot,
    n_cols,
    beta,
    kappa,
    n_rows,
    BLOCK: tl.constexpr,
    ROWS: tl.constexpr,
    ACT: tl.constexpr,
):
    # ROWS tokens per program: 1 on a GPU, more in the interpreter (its cost is per program)
    tok = (tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS))[:, None]
    cols = (tl.program_id(1) * BLOCK + tl.arange(0, BLOCK))[None, :]
    mask = (tok < n_rows) & (cols < n_cols)
    dtype = x_ptr.dtype.element_ty
    row = x_ptr + tok * stride_xt
    gate = tl.load(row + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(row + n_cols + cols, mask=mask, other=0.0).to(tl.float32)
    if ACT == 0:
        act = tl.div_rn(gate, 1.0 + exp_f32(-gate))  # F.silu(gate)
    else:
        inner = beta * tl.fma(kappa, gate * gate * gate, gate)  # contracted by nvcc in torch
        act = (0.5 * gate) * (1.0 + tanh_f32(inner))  # F.gelu(gate, approximate="tanh")
    out = round_to(round_to(act, dtype) * up, dtype)  # ... * up
    tl.store(out_ptr + tok * stride_ot + cols, out, mask=mask)


def silu_and_mul(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``silu(x[..., :I]) * x[..., I:]`` for ``x`` ``[..., 2 * I]`` -> ``[..., I]``.

    ``x`` may have a row stride (a column slice), but its last dimension must be contiguous.
    The result goes to ``out`` when given (contiguous), else to a new tensor.
    """
    return _act_and_mul(x, out, SILU)


def gelu_tanh_and_mul(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``gelu(x[..., :I], approximate="tanh") * x[..., I:]`` (Gemma's GeGLU); otherwise as
    ``silu_and_mul``."""
    return _act_and_mul(x, out, GELU_TANH)


def _act_and_mul(x: torch.Tensor, out: torch.Tensor | None, act: int) -> torch.Tensor:
    if x.shape[-1] % 2:
        raise ValueError(f"last dimension must be even (gate and up), got {x.shape[-1]}")
    if x.stride(-1) != 1:
        raise ValueError("x must be contiguous in its last dimension")
    n_cols = x.shape[-1] // 2
    shape = (*x.shape[:-1], n_cols)
    if out is None:
        out = torch.empty(shape, dtype=x.dtype, device=x.device)
    if out.shape != shape or out.dtype != x.dtype or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {shape} {x.dtype} tensor")
    if out.numel() == 0:
        return out
    x2 = x.reshape(-1, x.shape[-1])  # a view unless >2-D and not viewable
    out2 = out.view(-1, n_cols)
    rows = _INTERPRETER_ROWS if interpreting() else 1
    _act_and_mul_kernel[(triton.cdiv(x2.shape[0], rows), triton.cdiv(n_cols, _BLOCK))](
        x2,
        out2,
        x2.stride(0),
        out2.stride(0),
        n_cols,
        _GELU_BETA,
        _GELU_KAPPA,
        x2.shape[0],
        BLOCK=_BLOCK,
        ROWS=rows,
        ACT=act,
        **launch_options(_BLOCK),
    )
    return out
