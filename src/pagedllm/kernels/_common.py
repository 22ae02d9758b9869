"""Launch-time choices shared by the kernels."""

from __future__ import annotations

import os

import torch

FP8_DTYPES = (torch.float8_e4m3fn,)


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def fp16_dots_for_fp8(kv_dtype: torch.dtype, query_dtype: torch.dtype) -> bool:
    """Whether attention over float8 pages runs its dots in float16 (a bf16 query).

    Converting e4m3 to bf16 takes a chain of conversion instructions per element, and Hopper's
    conversion throughput is low: with it the fp8 decode and extend kernels were ALU-bound at
    0.71-0.75x the speed of bf16 pages (H200, 2026-12-02) despite reading half the bytes.
    e4m3 -> fp16 is one hardware conversion per pair and exact (fp16 holds every e4m3 value),
    so the kernels convert the query to fp16 once (exact for |q| in fp16's range, clamped to
    +-65504 beyond it; bf16 holds 8 mantissa bits, fp16 11) and K, V and the probabilities per
    tile; accumulation stays fp32 and the output keeps the query's dtype.
    """
    return kv_dtype in FP8_DTYPES and query_dtype == torch.bfloat16


def dot_options(dtype: torch.dtype) -> tuple[str, bool]:
    """``(DOT_PRECISION, DOT_FP32)`` constexprs for ``tl.dot`` on ``dtype`` operands.

    float32 operands use "ieee" so tensor cores do not round them to tf32. The interpreter
    mis-multiplies bfloat16 operands (it stores them as uint16), so there the operands are
    upcast to float32 first; on a GPU bf16/fp16 go to the tensor cores as they are.
    """
    upcast = interpreting() and dtype == torch.bfloat16
    precision = "ieee" if dtype == torch.float32 or upcast else "tf32"
    return precision, upcast
