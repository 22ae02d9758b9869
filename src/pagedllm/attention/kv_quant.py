"""FP8 (e4m3) KV cache: dtype names, per-layer scales, quantize on write, dequantize on read.

A page of an fp8 cache holds ``round_e4m3(x / scale)`` saturated to +-448; reading it back gives
``page * scale``. Every layer has one K scale and one V scale (a float32 tensor ``[2]`` on the
device, owned by the attention layer): kernels load it from memory, so a CUDA graph captured
with it stays valid whatever value it holds. The default scale is 1.0 (vLLM's default without
calibration); ``docs/studies.md`` ("FP8 KV cache") records why that is kept.

The Triton kernels do the same arithmetic in registers (``kernels/reshape_and_cache.py``,
``paged_decode.py``, ``paged_extend.py``); the helpers here are the torch path and the oracle.
"""

from __future__ import annotations

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite e4m3fn value

_FLOAT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_kv_cache_dtype(name: str, model_dtype: torch.dtype) -> torch.dtype:
    """The page dtype for ``kv_cache_dtype`` ``name`` (``auto``: the model's dtype)."""
    if name == "auto":
        return model_dtype
    if name in ("fp8", "fp8_e4m3"):
        return FP8_DTYPE
    if name in _FLOAT_DTYPES:
        return _FLOAT_DTYPES[name]
    raise ValueError(f"kv_cache_dtype must be auto, float32, bfloat16, float16, fp8 or fp8_e4m3; "
                     f"got {name!r}")  # fmt: skip


def is_fp8(dtype: torch.dtype) -> bool:
    """Whether pages of this dtype are quantized (need a scale)."""
    return dtype == FP8_DTYPE


def default_kv_scale(device: torch.device | str) -> torch.Tensor:
    """One layer's ``[k_scale, v_scale]``: 1.0 each, float32."""
    return torch.ones(2, dtype=torch.float32, device=device)


def quantize(x: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """``x / scale`` saturated to the e4m3 range, as float8 e4m3 (round to nearest even)."""
    y = x.float()
    if scale is not None:
        y = y / scale
    return y.clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)


def dequantize(x: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """float8 pages back to ``dtype``: ``x * scale`` (computed in float32)."""
    y = x.float()
    if scale is not None:
        y = y * scale
    return y.to(dtype)
