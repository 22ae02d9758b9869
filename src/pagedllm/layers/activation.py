"""Activation functions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pagedllm.layers import _fused


class SiluAndMul(nn.Module):
    """``silu(gate) * up`` on a merged ``[..., 2 * I]`` gate_up projection.

    On CUDA one Triton kernel (``kernels/activation.py``) with torch's rounding.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _fused.use_fused(x, "silu_and_mul"):
            from pagedllm.kernels.activation import silu_and_mul

            return silu_and_mul(x)
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate) * up


class GeluTanhAndMul(nn.Module):
    """``gelu_tanh(gate) * up`` on a merged ``[..., 2 * I]`` gate_up projection (Gemma's GeGLU,
    HF ``gelu_pytorch_tanh``).

    On CUDA one Triton kernel (``kernels/activation.py``) with torch's rounding.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _fused.use_fused(x, "gelu_and_mul"):
            from pagedllm.kernels.activation import gelu_tanh_and_mul

            return gelu_tanh_and_mul(x)
        gate, up = x.chunk(2, dim=-1)
        return F.gelu(gate, approximate="tanh") * up
