"""RMSNorm (Llama's, optionally fused with the residual add that precedes it) and Gemma's."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pagedllm.layers import _fused


class RMSNorm(nn.Module):
    """RMSNorm as in HF Llama: normalize in float32, cast back, then scale by ``weight``.

    On CUDA the residual add and the norm run as one Triton kernel
    (``kernels/fused_norm.py``) with the same rounding; this torch code is the CPU path.
    """

    def __init__(
        self,
        hidden_size: int,
        eps: float = 1e-6,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        self.eps = eps
        self.hidden_size = hidden_size
        self.weight = nn.Parameter(
            torch.ones(hidden_size, dtype=dtype, device=device), requires_grad=False
        )

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize over the last dimension (no residual)."""
        if _fused.use_fused(x, "rmsnorm"):
            from pagedllm.kernels.fused_norm import rms_norm

            return rms_norm(x, self.weight, self.eps)
        normed = F.rms_norm(x.float(), (self.hidden_size,), eps=self.eps)
        return self.weight * normed.to(x.dtype)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(norm(x + residual), x + residual)``; with no residual, ``(norm(x), x)``.

        The add happens in the model dtype, exactly like HF's ``residual + hidden``.
        """
        if _fused.use_fused(x, "rmsnorm"):
            from pagedllm.kernels.fused_norm import rms_norm

            if residual is None:
                return rms_norm(x, self.weight, self.eps), x
            return rms_norm(x, self.weight, self.eps, residual)
        if residual is not None:
            x = x + residual
        return self.normalize(x), x


class GemmaRMSNorm(nn.Module):
    """``x / rms(x) * (1 + weight)``, computed in float32 and cast once (HF Gemma's order).

    Gemma normalizes each branch output before its residual add and the sum again before the
    next branch; ``add_to`` does the two norms and the add, and ``scale_then`` the embedding
    scale and the first norm. On CUDA each is one Triton kernel (``kernels/gemma_norm.py``)
    with the same rounding; the torch code is the CPU path.
    """

    def __init__(self, hidden_size: int, eps: float, dtype: torch.dtype, device: Any) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(
            torch.zeros(hidden_size, dtype=dtype, device=device), requires_grad=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _fused.use_fused(x, "rmsnorm"):
            from pagedllm.kernels.gemma_norm import gemma_rms_norm

            return gemma_rms_norm(x, self.weight, self.eps)
        xf = x.float()
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (out * (1.0 + self.weight.float())).to(x.dtype)

    def add_to(
        self, x: torch.Tensor, residual: torch.Tensor, next_norm: GemmaRMSNorm
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(next_norm(summed), summed)`` with ``summed = residual + self(x)`` (the add in
        the model dtype, as HF's ``residual + hidden``)."""
        if _fused.use_fused(x, "rmsnorm"):
            from pagedllm.kernels.gemma_norm import gemma_add_rms_norm

            return gemma_add_rms_norm(
                x, residual, self.weight, next_norm.weight, self.eps, next_norm.eps
            )
        summed = residual + self(x)
        return next_norm(summed), summed

    def scale_then(self, x: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(self(scaled), scaled)`` with ``scaled = x * scale`` in ``x``'s dtype."""
        if _fused.use_fused(x, "rmsnorm"):
            from pagedllm.kernels.gemma_norm import gemma_scale_rms_norm

            return gemma_scale_rms_norm(x, scale, self.weight, self.eps)
        scaled = x * scale
        return self(scaled), scaled
