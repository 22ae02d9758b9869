"""Tanh soft-capping of attention scores (Gemma 2), shared by the paged attention kernels."""

from __future__ import annotations

import math

import triton
import triton.language as tl

LOG2E = math.log2(math.e)


@triton.jit
def soft_cap(s, cap):
    """``cap * tanh(s / cap)`` in base-2 units (times log2 e, for the kernels' ``exp2``).

    ``tanh(x) = 1 - 2 / (exp(2x) + 1)``: exact at both saturations (exp overflowing to inf
    gives 1, underflowing to 0 gives -1), with no libdevice call so the interpreter runs it.
    """
    x = s / cap
    t = 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)
    return t * (cap * 1.4426950408889634)
