"""Gemma 2: alternating local (sliding-window) and global layers.

Differences from Llama, as Hugging Face's ``modeling_gemma2`` computes them:

* RMSNorm scales by ``1 + weight`` in float32 before casting back (``GemmaRMSNorm``);
* four norms per layer: input, post-attention, pre-feed-forward and post-feed-forward, each
  branch's output normalized *before* its residual add; the residual stream is carried with
  its next norm already applied (``GemmaRMSNorm.add_to``: branch post-norm, add, next norm,
  one Triton kernel on CUDA), the embedding scale fused into the first norm;
* the embedding is multiplied by ``sqrt(hidden_size)`` rounded to the model dtype;
* attention scale ``query_pre_attn_scalar ** -0.5`` and scores soft-capped as
  ``cap * tanh(score / cap)`` (``attn_logit_softcapping``), final logits likewise
  (``final_logit_softcapping``);
* the MLP is GeGLU with the tanh approximation of GELU;
* ``layer_types`` (or the default: even layers local) picks the window per layer, which the KV
  manager uses to free the pages a local layer can no longer see.

Gemma 3 (``gemma3.py``) reuses these blocks with q/k norms and two rope bases.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from pagedllm.layers.activation import GeluTanhAndMul
from pagedllm.layers.attention import Attention
from pagedllm.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from pagedllm.layers.linear import ColumnParallelLinear, RowParallelLinear
from pagedllm.layers.rmsnorm import GemmaRMSNorm
from pagedllm.layers.rotary import RotaryEmbedding
from pagedllm.models.llama import LlamaAttention, LlamaForCausalLM, ModelArgs


def gemma_args(cfg: dict[str, Any]) -> tuple[ModelArgs, dict[str, float]]:
    """``ModelArgs`` for a Gemma config plus the rope base per layer type.

    Gemma 3 configs nest ``rope_parameters`` per layer type (or give ``rope_theta`` and
    ``rope_local_base_freq``); Gemma 2 has one base for every layer.
    """
    rope = dict(cfg.get("rope_parameters") or {})
    nested = isinstance(rope.get("full_attention"), dict)
    full = dict(rope["full_attention"]) if nested else rope
    local = dict(rope.get("sliding_attention") or {}) if nested else {}
    flat = dict(cfg)
    flat["rope_parameters"] = full or None
    flat.setdefault("rms_norm_eps", 1e-6)
    flat.setdefault("tie_word_embeddings", True)
    args = ModelArgs.from_hf_config(flat)
    global_theta = full.get("rope_theta") or cfg.get("rope_theta") or args.rope_theta
    local_theta = local.get("rope_theta") or cfg.get("rope_local_base_freq") or global_theta
    args.rope_theta = float(global_theta)
    # scaling (Gemma 3 4B+: linear factor 8) applies to the global layers only
    scaling = {k: v for k, v in full.items() if k != "rope_theta"}
    args.rope_scaling = scaling if scaling.get("rope_type", "default") != "default" else None
    return args, {"full": float(global_theta), "local": float(local_theta)}


class GemmaAttention(LlamaAttention):
    """Llama attention with Gemma's scale, soft-capping and a per-layer rope base."""

    def __init__(
        self,
        args: ModelArgs,
        layer_idx: int,
        dtype: torch.dtype,
        device: Any,
        cfg: dict[str, Any],
        rope_bases: dict[str, float],
    ) -> None:
        super().__init__(args, layer_idx, dtype, device)
        window = args.sliding_windows[layer_idx]
        local = window is not None
        self.rotary_emb = RotaryEmbedding(
            args.head_dim,
            args.max_position,
            rope_bases["local" if local else "full"],
            None if local else args.rope_scaling,
            device,
        )
        self.attn = Attention(
            self.num_heads,
            args.head_dim,
            self.num_kv_heads,
            float(cfg.get("query_pre_attn_scalar") or args.head_dim) ** -0.5,
            layer_idx,
            sliding_window=window,
            logit_softcap=cfg.get("attn_logit_softcapping"),
        )


class GemmaMLP(nn.Module):
    """``down(gelu_tanh(gate(x)) * up(x))`` with gate/up merged."""

    def __init__(self, args: ModelArgs, dtype: torch.dtype, device: Any) -> None:
        super().__init__()
        size = args.intermediate_size
        self.gate_up_proj = ColumnParallelLinear(
            args.hidden_size, [size, size], False, dtype, device
        )
        self.down_proj = RowParallelLinear(size, args.hidden_size, False, dtype, device)
        self.act_fn = GeluTanhAndMul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_up_proj(x)))


class GemmaDecoderLayer(nn.Module):
    """Sandwich norms: each branch is normalized before and after, then added."""

    def __init__(self, attn: nn.Module, args: ModelArgs, dtype: torch.dtype, device: Any) -> None:
        super().__init__()
        self.self_attn = attn
        self.mlp = GemmaMLP(args, dtype, device)
        size, eps = args.hidden_size, args.rms_norm_eps
        self.input_layernorm = GemmaRMSNorm(size, eps, dtype, device)
        self.post_attention_layernorm = GemmaRMSNorm(size, eps, dtype, device)
        self.pre_feedforward_layernorm = GemmaRMSNorm(size, eps, dtype, device)
        self.post_feedforward_layernorm = GemmaRMSNorm(size, eps, dtype, device)

    def forward(
        self,
        positions: torch.Tensor,
        hidden: torch.Tensor,
        normed: torch.Tensor,
        next_norm: GemmaRMSNorm,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``hidden`` is the residual stream and ``normed`` its ``input_layernorm`` (computed
        where ``hidden`` was, fused with the add). Returns ``(next_norm(out), out)`` for this
        layer's output stream ``out``; ``next_norm`` is the next layer's input norm or the
        final norm."""
        branch = self.self_attn(positions, normed)
        normed, hidden = self.post_attention_layernorm.add_to(
            branch, hidden, self.pre_feedforward_layernorm
        )
        branch = self.mlp(normed)
        return self.post_feedforward_layernorm.add_to(branch, hidden, next_norm)


class GemmaModel(nn.Module):
    """Scaled embedding, decoder layers, final norm (HF's ``model.`` prefix)."""

    def __init__(
        self, args: ModelArgs, layers: list[nn.Module], dtype: torch.dtype, device: Any
    ) -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(args.vocab_size, args.hidden_size, dtype, device)
        self.layers = nn.ModuleList(layers)
        self.norm = GemmaRMSNorm(args.hidden_size, args.rms_norm_eps, dtype, device)
        # HF rounds sqrt(hidden) to the model dtype before multiplying
        self.normalizer = float(torch.tensor(math.sqrt(args.hidden_size), dtype=dtype))

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        norms = [layer.input_layernorm for layer in self.layers] + [self.norm]
        normed, hidden = norms[0].scale_then(self.embed_tokens(input_ids), self.normalizer)
        for layer, next_norm in zip(self.layers, norms[1:], strict=True):
            normed, hidden = layer(positions, hidden, normed, next_norm)
        return normed


class Gemma2ForCausalLM(LlamaForCausalLM):
    """Gemma 2 causal LM over a paged KV cache (weights load by HF names, as Llama's)."""

    attention_cls = GemmaAttention

    def __init__(
        self, hf_config: dict[str, Any], dtype: torch.dtype = torch.float32, device: Any = "cpu"
    ) -> None:
        nn.Module.__init__(self)
        args, bases = gemma_args(hf_config)
        self.args, self.dtype = args, dtype
        self.num_layers, self.head_dim = args.num_layers, args.head_dim
        self.num_heads, self.num_kv_heads = 0, 0
        layers = []
        for i in range(args.num_layers):
            attn = self.attention_cls(args, i, dtype, device, hf_config, bases)
            self.num_heads, self.num_kv_heads = attn.num_heads, attn.num_kv_heads
            layers.append(GemmaDecoderLayer(attn, args, dtype, device))
        self.model = GemmaModel(args, layers, dtype, device)
        self.lm_head = ParallelLMHead(args.vocab_size, args.hidden_size, dtype, device)
        if args.tie_word_embeddings:
            self.lm_head.tie(self.model.embed_tokens)
        self.final_softcap = hf_config.get("final_logit_softcapping")

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[N, hidden]`` -> float32 logits, soft-capped when the config says so."""
        logits = self.lm_head(hidden)
        if self.final_softcap:
            logits = torch.tanh(logits / self.final_softcap) * self.final_softcap
        return logits
