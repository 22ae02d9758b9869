"""Launch-time choices shared by the kernels."""

from __future__ import annotations

import os

import torch


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def dot_options(dtype: torch.dtype) -> tuple[str, bool]:
    """``(DOT_PRECISION, DOT_FP32)`` constexprs for ``tl.dot`` on ``dtype`` operands.

    float32 operands use "ieee" so tensor cores do not round them to tf32. The interpreter
    mis-multiplies bfloat16 operands (it stores them as uint16), so there the operands are
    upcast to float32 first; on a GPU bf16/fp16 go to the tensor cores as they are.
    """
    upcast = interpreting() and dtype == torch.bfloat16
    precision = "ieee" if dtype == torch.float32 or upcast else "tf32"
    return precision, upcast
