"""Qwen3: the Llama architecture plus a per-head RMSNorm on q and k before RoPE.

Qwen3 configs give ``head_dim`` explicitly (it need not be hidden / heads) and have no q/k/v
bias unless ``attention_bias`` says so; ``ModelArgs`` already reads both.

On CUDA the q/k norms and RoPE run as one Triton kernel (``kernels/rotary.qk_norm_rotary``)
with the torch path's rounding; on CPU the torch layers below do.
"""

from __future__ import annotations

from typing import Any

import torch

from pagedllm.layers import _fused
from pagedllm.layers.rmsnorm import RMSNorm
from pagedllm.models.llama import LlamaAttention, LlamaForCausalLM, ModelArgs


class Qwen3Attention(LlamaAttention):
    """Llama attention with ``q_norm``/``k_norm`` over each head's ``head_dim`` values."""

    def __init__(self, args: ModelArgs, layer_idx: int, dtype: torch.dtype, device: Any) -> None:
        super().__init__(args, layer_idx, dtype, device)
        self.q_norm = RMSNorm(args.head_dim, args.rms_norm_eps, dtype, device)
        self.k_norm = RMSNorm(args.head_dim, args.rms_norm_eps, dtype, device)

    def qk_transform(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        num_tokens = q.shape[0]
        q = self.q_norm.normalize(q.view(num_tokens, self.num_heads, self.head_dim))
        k = self.k_norm.normalize(k.view(num_tokens, self.num_kv_heads, self.head_dim))
        return q.view(num_tokens, self.q_size), k.view(num_tokens, self.kv_size)

    def position_qk(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not _fused.use_fused(q, "rotary"):
            return super().position_qk(positions, q, k)
        return fused_qk_norm_rotary(self, positions, q, k)


def fused_qk_norm_rotary(
    attn: LlamaAttention,
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    gemma: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``attn``'s ``q_norm``/``k_norm`` and RoPE as one kernel (``kernels/rotary.py``); Gemma
    3's norm with ``gemma=True``. Only for CUDA tensors (the kernel module imports triton)."""
    from pagedllm.kernels.rotary import qk_norm_rotary

    rope = attn.rotary_emb
    return qk_norm_rotary(
        positions,
        q,
        k,
        rope.cos_cache,
        rope.sin_cache,
        attn.head_dim,
        attn.q_norm.weight,
        attn.k_norm.weight,
        attn.q_norm.eps,  # q_norm and k_norm share rms_norm_eps
        gemma=gemma,
    )


class Qwen3ForCausalLM(LlamaForCausalLM):
    """Qwen3 dense causal LM."""

    attention_cls = Qwen3Attention
