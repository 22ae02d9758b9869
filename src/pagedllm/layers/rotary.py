"""Rotary position embedding (RoPE), NeoX style (``rotate_half``) as HF Llama applies it.

The cos/sin tables are computed once in float32 for every position up to
``max_position_embeddings`` and indexed by the positions of the batch, so a forward pass does
no trigonometry. Supported ``rope_type``: ``default``, ``linear`` and ``llama3`` (Llama 3.1
frequency scaling).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from pagedllm.layers import _fused

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


def _llama3_inv_freq(inv_freq: torch.Tensor, scaling: dict[str, Any]) -> torch.Tensor:
    """Llama 3.1: keep high frequencies, divide low ones by ``factor``, blend in between."""
    factor = float(scaling["factor"])
    low_freq_factor = float(scaling.get("low_freq_factor", 1.0))
    high_freq_factor = float(scaling.get("high_freq_factor", 4.0))
    old_context_len = float(scaling.get("original_max_position_embeddings", 8192))
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def compute_inv_freq(
    head_dim: int, base: float, rope_scaling: dict[str, Any] | None = None
) -> torch.Tensor:
    """Inverse frequencies ``[head_dim // 2]`` (float32), with the given scaling applied."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    inv_freq = 1.0 / (base**exponents)
    rope_type = "default"
    if rope_scaling:
        rope_type = rope_scaling.get("rope_type", rope_scaling.get("type", "default"))
    if rope_type == "default":
        return inv_freq
    if rope_type == "linear":
        # HF divides positions by the factor; dividing the frequencies is the same product.
        return inv_freq / float(rope_scaling["factor"])
    if rope_type == "llama3":
        return _llama3_inv_freq(inv_freq, rope_scaling)
    raise ValueError(
        f"unsupported rope_type {rope_type!r}; supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
    )


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[x1, x2] -> [-x2, x1]`` over the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RotaryEmbedding(nn.Module):
    """Applies RoPE to flat ``q [T, H*D]`` and ``k [T, KVH*D]`` at the given positions.

    On CUDA q and k are rotated by one Triton kernel (``kernels/rotary.py``) with the same
    rounding as the torch ops below, which stay the CPU path.
    """

    def __init__(
        self,
        head_dim: int,
        max_position: int,
        base: float = 10000.0,
        rope_scaling: dict[str, Any] | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.max_position = max_position
        inv_freq = compute_inv_freq(head_dim, base, rope_scaling)
        freqs = torch.outer(torch.arange(max_position, dtype=torch.float32), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)  # [max_pos, D]
        # Buffers, not parameters: never in a checkpoint, moved with the module.
        self.register_buffer("cos_cache", emb.cos().to(device), persistent=False)
        self.register_buffer("sin_cache", emb.sin().to(device), persistent=False)

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.view(shape[0], -1, self.head_dim)
        # HF casts cos/sin to the activation dtype and multiplies there.
        out = x * cos + rotate_half(x) * sin
        return out.view(shape)

    def forward(
        self, positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate ``query``/``key`` (flat ``[T, heads * head_dim]``) by ``positions [T]``."""
        if _fused.use_fused(query, "rotary"):
            from pagedllm.kernels.rotary import apply_rotary

            return apply_rotary(
                positions, query, key, self.cos_cache, self.sin_cache, self.head_dim
            )
        cos = self.cos_cache[positions].to(query.dtype).unsqueeze(1)  # [T, 1, D]
        sin = self.sin_cache[positions].to(query.dtype).unsqueeze(1)
        return self._rotate(query, cos, sin), self._rotate(key, cos, sin)
