"""Qwen3: the Llama architecture plus a per-head RMSNorm on q and k before RoPE.

Qwen3 configs give ``head_dim`` explicitly (it need not be hidden / heads) and have no q/k/v
bias unless ``attention_bias`` says so; ``ModelArgs`` already reads both.
"""

from __future__ import annotations

from typing import Any

import torch

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


class Qwen3ForCausalLM(LlamaForCausalLM):
    """Qwen3 dense causal LM."""

    attention_cls = Qwen3Attention
