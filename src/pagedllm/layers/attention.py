"""The attention layer: writes this step's K/V into the paged cache, then attends over it.

It reads the batch layout, the layer's KV pages and the backend from the forward context
(``attention.metadata.get_forward_context``) so the model's forward stays
``(input_ids, positions)``.
"""

from __future__ import annotations

import torch
from torch import nn

from pagedllm.attention.metadata import get_forward_context
from pagedllm.attention.torch_backend import _sdpa


class Attention(nn.Module):
    """Paged multi-head attention with grouped K/V heads (GQA)."""

    def __init__(
        self,
        num_heads: int,
        head_dim: int,
        num_kv_heads: int,
        scale: float,
        layer_idx: int,
        sliding_window: int | None = None,
        logit_softcap: float | None = None,
    ) -> None:
        super().__init__()
        if num_heads % num_kv_heads != 0:
            raise ValueError(
                f"num_attention_heads ({num_heads}) must be a multiple of "
                f"num_key_value_heads ({num_kv_heads})"
            )
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.num_kv_heads = num_kv_heads
        self.scale = scale
        self.layer_idx = layer_idx
        self.sliding_window = sliding_window
        # Gemma 2: scores become cap * tanh(score / cap) before the mask
        self.logit_softcap = logit_softcap or None
        # fp8 KV cache: this layer's [k_scale, v_scale] (float32, on the device), set by the
        # runner when it allocates an fp8 cache; None for caches in a float dtype
        self.kv_scale: torch.Tensor | None = None

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``q [T, H*D]``, ``k``/``v`` ``[T, KVH*D]`` -> ``[T, H*D]``."""
        num_tokens = q.shape[0]
        query = q.view(num_tokens, self.num_heads, self.head_dim)
        key = k.view(num_tokens, self.num_kv_heads, self.head_dim)
        value = v.view(num_tokens, self.num_kv_heads, self.head_dim)
        ctx = get_forward_context()
        if ctx.metadata is None:
            out = self._dense_causal(query, key, value)
        else:
            kv_cache = ctx.kv_caches[self.layer_idx]
            metadata = ctx.metadata_for(self.layer_idx)
            ctx.backend.write_kv(
                key, value, kv_cache, metadata.slot_mapping, kv_scale=self.kv_scale
            )
            out = ctx.backend.forward(
                query,
                kv_cache,
                metadata,
                self.scale,
                sliding_window=self.sliding_window,
                softcap=self.logit_softcap,
                kv_scale=self.kv_scale,
            )
        return out.reshape(num_tokens, self.num_heads * self.head_dim)

    def _dense_causal(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
    ) -> torch.Tensor:
        """Profiling pass: the whole batch as one causal sequence, no KV cache."""
        q, k, v = (x.transpose(0, 1).unsqueeze(0) for x in (query, key, value))
        mask = None
        if self.sliding_window is not None:
            pos = torch.arange(q.shape[2], device=q.device)
            diff = pos[:, None] - pos[None, :]
            mask = (diff >= 0) & (diff < self.sliding_window)
        out = _sdpa(q, k, v, self.scale, mask, mask is None, self.logit_softcap)
        return out[0].transpose(0, 1)
