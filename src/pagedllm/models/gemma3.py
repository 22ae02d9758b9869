"""Gemma 3 text (``Gemma3ForCausalLM``): Gemma 2's blocks with q/k norms and two rope bases.

Five local (sliding-window) layers per global one by default (``layer_types``, or the older
``sliding_window_pattern``); local layers use ``rope_local_base_freq`` (10k), global ones
``rope_theta`` (1M) plus any rope scaling. q and k are RMS-normalized per head (``1 + weight``)
before RoPE (on CUDA the norms and RoPE are one Triton kernel, ``kernels/rotary.py``).
Soft-capping is off unless the config sets it.
"""

from __future__ import annotations

from typing import Any

import torch

from pagedllm.layers import _fused
from pagedllm.layers.rmsnorm import GemmaRMSNorm
from pagedllm.models.gemma2 import Gemma2ForCausalLM, GemmaAttention
from pagedllm.models.llama import ModelArgs
from pagedllm.models.qwen3 import fused_qk_norm_rotary


class Gemma3Attention(GemmaAttention):
    """Gemma attention with ``q_norm``/``k_norm`` over each head's ``head_dim`` values."""

    def __init__(
        self,
        args: ModelArgs,
        layer_idx: int,
        dtype: torch.dtype,
        device: Any,
        cfg: dict[str, Any],
        rope_bases: dict[str, float],
    ) -> None:
        super().__init__(args, layer_idx, dtype, device, cfg, rope_bases)
        self.q_norm = GemmaRMSNorm(args.head_dim, args.rms_norm_eps, dtype, device)
        self.k_norm = GemmaRMSNorm(args.head_dim, args.rms_norm_eps, dtype, device)

    def qk_transform(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = q.shape[0]
        q = self.q_norm(q.view(n, self.num_heads, self.head_dim)).view(n, self.q_size)
        k = self.k_norm(k.view(n, self.num_kv_heads, self.head_dim)).view(n, self.kv_size)
        return q, k

    def position_qk(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not _fused.use_fused(q, "rotary"):
            return super().position_qk(positions, q, k)
        return fused_qk_norm_rotary(self, positions, q, k, gemma=True)


class Gemma3ForCausalLM(Gemma2ForCausalLM):
    """Gemma 3 text causal LM."""

    attention_cls = Gemma3Attention
