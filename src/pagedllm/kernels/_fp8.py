"""float8 e4m3 page tiles to float16 in registers: the kernels' two conversion routes.

``tl.cast`` lowers to ``cvt.rn.f16x2.e4m3x2`` (one instruction per two elements, on the
conversion unit). ``e4m3_to_f16_bits`` does the same with integer ALU work instead: an e4m3
byte ``s eeee mmm`` moved into an fp16 bit pattern ``s 0eeee mmm 0000000`` is the value times
2^-8 (fp16's exponent bias is 15, e4m3's 7), subnormals included (an fp16 subnormal scaled by
2^8 is exact), so one multiply by 256 finishes it. Both are exact; which one is faster depends
on whether the conversion unit or the integer pipes are the bottleneck, which only a GPU run
can say (``benchmarks/fp8_kernel_variants.py``). NaN (0x7f/0xff) becomes +-480: pages never
hold it (writes saturate to +-448).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def e4m3_to_f16_bits(x):
    """float8 e4m3 tensor -> float16 by bit manipulation (exact, see the module docstring)."""
    u = x.to(tl.uint8, bitcast=True).to(tl.uint16)
    h = ((u & 0x80) << 8) | ((u & 0x7F) << 7)
    return h.to(tl.float16, bitcast=True) * 256.0


@triton.jit
def fp8_tile_to_f16(x, BITS: tl.constexpr):
    """An e4m3 tile as float16: by bit manipulation when ``BITS``, else by ``tl.cast``."""
    if BITS:
        return e4m3_to_f16_bits(x)
    else:
        return x.to(tl.float16)
