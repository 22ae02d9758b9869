"""Triton helpers that reproduce PyTorch's elementwise rounding for the fused kernels.

An eager PyTorch op on bfloat16/float16 tensors computes in float32 and rounds its result to
the tensor dtype (round to nearest even) before the next op sees it. The fused kernels keep
every value in float32 registers, so to stay bit-identical to the torch layers they round
explicitly wherever torch would have stored a low-precision tensor: ``round_to`` is that
store-and-reload, without the memory round trip.

The Triton interpreter (``TRITON_INTERPRET=1``) truncates on a plain float32 -> bfloat16 cast
and rounds ties away from zero with ``rtne`` (it stores bfloat16 as uint16 and converts by
hand), so there bfloat16 rounding is done on the float32 bits instead. The GPU uses the native
``cvt.rn.bf16.f32``, which is exact round-to-nearest-even.
"""

from __future__ import annotations

import triton
import triton.language as tl
from triton.language.extra import libdevice

from pagedllm.kernels._common import interpreting

# Read when this module is imported, like TRITON_INTERPRET itself (at ``@triton.jit``).
_INTERPRETING = tl.constexpr(interpreting())


@triton.jit
def round_to(x, DTYPE: tl.constexpr):
    """``x`` (float32) rounded to ``DTYPE`` as torch stores it, returned as float32."""
    if DTYPE == tl.float32:
        y = x
    elif DTYPE == tl.bfloat16 and _INTERPRETING:
        # Round to nearest even on the bits: add 0x7FFF plus the lowest kept bit, then drop
        # the low 16 bits. NaN passes through unchanged (the add could turn it into +-0/inf).
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        y = tl.where(x == x, bits.to(tl.float32, bitcast=True), x)
    else:
        y = x.to(DTYPE).to(tl.float32)
    return y


@triton.jit
def exp_f32(x):
    """float32 ``exp`` with CUDA's ``expf`` accuracy (what torch's CUDA kernels call).

    ``tl.exp`` on float32 is ``ex2.approx`` of ``x * log2(e)``, several ulp off for large
    ``|x|``; libdevice's ``__nv_expf`` is CUDA's own ``expf``. The interpreter has no
    libdevice, and uses numpy's ``exp`` for ``tl.exp``.
    """
    if _INTERPRETING:
        y = tl.exp(x)
    else:
        y = libdevice.exp(x)
    return y


def launch_options(elements: int) -> dict[str, int | bool]:
    """``num_warps`` for a program over ``elements`` values (~8 per thread), and no FMA.

    Fusing ``a * b + c`` into one FMA rounds once where torch rounds twice, so float32
    results would differ from the separate torch ops; these kernels are memory-bound, so
    the FMA buys nothing.
    """
    num_warps = min(max(triton.next_power_of_2(elements) // 256, 1), 16)
    return {"num_warps": num_warps, "enable_fp_fusion": False}


@triton.jit
def tanh_f32(x):
    """float32 ``tanh`` as CUDA's ``tanhf`` (libdevice ``__nv_tanhf``, what torch calls).

    The interpreter has no libdevice: there ``1 - 2 / (exp(2x) + 1)`` in float64 (so the
    float32 result is nearly always the correctly rounded one, as ``tanhf`` is to ~1 ulp) on
    ``x`` clamped to ``[-20, 20]`` (``tanh`` is +-1 in float32 beyond ~9; the clamp keeps
    ``exp`` finite).
    """
    if _INTERPRETING:
        c = tl.minimum(tl.maximum(x, -20.0), 20.0).to(tl.float64)
        y = (1.0 - 2.0 / (tl.exp(2.0 * c) + 1.0)).to(tl.float32)
    else:
        y = libdevice.tanh(x)
    return y
