"""RMSNorm, optionally fused with the residual add that precedes it."""

from __future__ import annotations

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
