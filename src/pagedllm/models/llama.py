"""The Llama family: Llama 2/3 (incl. Llama 3.1 rope scaling), SmolLM, Mistral, Qwen2.

One flat batch in, hidden states out: ``model(input_ids [T], positions [T]) -> [T, hidden]``.
Attention reads its KV pages and batch layout from the forward context. q/k/v and gate/up are
merged into one projection each (one matmul instead of three/two); ``load_weights`` maps the
Hugging Face names onto the shards.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pagedllm.layers.activation import SiluAndMul
from pagedllm.layers.attention import Attention
from pagedllm.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from pagedllm.layers.linear import (
    ColumnParallelLinear,
    MergedLinear,
    QKVParallelLinear,
    RowParallelLinear,
    copy_weight,
)
from pagedllm.layers.rmsnorm import RMSNorm
from pagedllm.layers.rotary import RotaryEmbedding
from pagedllm.loader.attention_layout import layer_windows
from pagedllm.parallel.sharding import local_num_kv_heads
from pagedllm.parallel.state import get_tp_size

# (our merged module, HF module, shard index)
STACKED_PARAMS = (
    ("qkv_proj", "q_proj", 0),
    ("qkv_proj", "k_proj", 1),
    ("qkv_proj", "v_proj", 2),
    ("gate_up_proj", "gate_proj", 0),
    ("gate_up_proj", "up_proj", 1),
)


@dataclass(slots=True)
class ModelArgs:
    """The HF config keys the model needs, with HF's defaults filled in."""

    architecture: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    max_position: int
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    sliding_windows: list[int | None]  # per layer

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any]) -> ModelArgs:
        """Read a config.json dict (transformers v4 or v5 rope keys)."""
        arch = (cfg.get("architectures") or ["LlamaForCausalLM"])[0]
        hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
        rope_params = dict(cfg.get("rope_parameters") or {})
        rope_scaling = dict(cfg.get("rope_scaling") or rope_params)
        theta = rope_params.get("rope_theta", cfg.get("rope_theta")) or 10000.0
        attention_bias = bool(cfg.get("attention_bias") or False)
        num_layers = cfg["num_hidden_layers"]
        return cls(
            architecture=arch,
            hidden_size=hidden,
            intermediate_size=cfg["intermediate_size"],
            num_layers=num_layers,
            num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or hidden // heads,
            vocab_size=cfg["vocab_size"],
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope_theta=float(theta),
            rope_scaling=rope_scaling or None,
            max_position=cfg.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            # Qwen2 always has q/k/v biases (and none on o_proj); Llama's attention_bias
            # covers q/k/v/o.
            qkv_bias=attention_bias or arch == "Qwen2ForCausalLM",
            o_bias=attention_bias and arch != "Qwen2ForCausalLM",
            mlp_bias=bool(cfg.get("mlp_bias") or False),
            sliding_windows=layer_windows(cfg),
        )


class LlamaAttention(nn.Module):
    """qkv projection -> (optional per-head q/k transform) -> RoPE -> paged attention -> o.

    Under tensor parallelism (parallel/state.py) the heads are this rank's: ``num_heads`` and
    ``num_kv_heads`` are local counts, qkv is column-parallel and o_proj row-parallel.
    """

    def __init__(self, args: ModelArgs, layer_idx: int, dtype: torch.dtype, device: Any) -> None:
        super().__init__()
        tp = get_tp_size()
        # QKVParallelLinear raises a ValueError naming the head counts if tp cannot split them
        self.qkv_proj = QKVParallelLinear(
            args.hidden_size,
            args.head_dim,
            args.num_heads,
            args.num_kv_heads,
            args.qkv_bias,
            dtype,
            device,
        )
        self.num_heads = args.num_heads // tp
        self.num_kv_heads = local_num_kv_heads(args.num_kv_heads, tp)
        self.head_dim = args.head_dim
        self.q_size = self.num_heads * args.head_dim
        self.kv_size = self.num_kv_heads * args.head_dim
        self.o_proj = RowParallelLinear(
            args.num_heads * args.head_dim, args.hidden_size, args.o_bias, dtype, device
        )
        self.rotary_emb = RotaryEmbedding(
            args.head_dim, args.max_position, args.rope_theta, args.rope_scaling, device
        )
        self.attn = Attention(
            self.num_heads,
            args.head_dim,
            self.num_kv_heads,
            args.head_dim**-0.5,
            layer_idx,
            sliding_window=args.sliding_windows[layer_idx],
        )

    def qk_transform(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hook applied before RoPE (identity here; Qwen3 normalizes each head)."""
        return q, k

    def position_qk(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``qk_transform`` then RoPE (Qwen3 fuses the two into one kernel on CUDA)."""
        q, k = self.qk_transform(q, k)
        return self.rotary_emb(positions, q, k)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv_proj(hidden)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q, k = self.position_qk(positions, q, k)
        return self.o_proj(self.attn(q, k, v))


class LlamaMLP(nn.Module):
    """``down(silu(gate(x)) * up(x))`` with gate/up merged."""

    def __init__(self, args: ModelArgs, dtype: torch.dtype, device: Any) -> None:
        super().__init__()
        size = args.intermediate_size
        self.gate_up_proj = ColumnParallelLinear(
            args.hidden_size, [size, size], args.mlp_bias, dtype, device
        )
        self.down_proj = RowParallelLinear(size, args.hidden_size, args.mlp_bias, dtype, device)
        self.act_fn = SiluAndMul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_up_proj(x)))


class LlamaDecoderLayer(nn.Module):
    """Pre-norm block; the residual add is fused into the following RMSNorm."""

    def __init__(
        self,
        args: ModelArgs,
        layer_idx: int,
        dtype: torch.dtype,
        device: Any,
        attention_cls: type[LlamaAttention] = LlamaAttention,
    ) -> None:
        super().__init__()
        self.self_attn = attention_cls(args, layer_idx, dtype, device)
        self.mlp = LlamaMLP(args, dtype, device)
        self.input_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps, dtype, device)
        self.post_attention_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps, dtype, device)

    def forward(
        self, positions: torch.Tensor, hidden: torch.Tensor, residual: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(positions, hidden)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class LlamaModel(nn.Module):
    """Embedding, decoder layers, final norm (HF's ``model.`` prefix)."""

    def __init__(
        self, args: ModelArgs, dtype: torch.dtype, device: Any, attention_cls: type
    ) -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(args.vocab_size, args.hidden_size, dtype, device)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(args, i, dtype, device, attention_cls) for i in range(args.num_layers)
        )
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps, dtype, device)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids)
        residual = None
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual)
        hidden, _ = self.norm(hidden, residual)
        return hidden


class LlamaForCausalLM(nn.Module):
    """Llama / SmolLM / Mistral / Qwen2 causal LM over a paged KV cache.

    ``num_heads``/``num_kv_heads`` are this rank's (the KV pool is sized from them); ``args``
    keeps the model's full counts.
    """

    attention_cls: type[LlamaAttention] = LlamaAttention

    def __init__(
        self, hf_config: dict[str, Any], dtype: torch.dtype = torch.float32, device: Any = "cpu"
    ) -> None:
        super().__init__()
        args = ModelArgs.from_hf_config(hf_config)
        self.args = args
        self.dtype = dtype
        tp = get_tp_size()
        self.num_layers, self.num_heads = args.num_layers, args.num_heads // tp
        self.num_kv_heads = local_num_kv_heads(args.num_kv_heads, tp)
        self.head_dim = args.head_dim
        self.model = LlamaModel(args, dtype, device, self.attention_cls)
        self.lm_head = ParallelLMHead(args.vocab_size, args.hidden_size, dtype, device)
        if args.tie_word_embeddings:
            self.lm_head.tie(self.model.embed_tokens)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``input_ids [T]``, ``positions [T]`` -> hidden states ``[T, hidden]``."""
        return self.model(input_ids, positions)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[N, hidden]`` -> float32 logits ``[N, vocab]``."""
        return self.lm_head(hidden)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load Hugging Face named tensors (cast to the model dtype).

        Raises ValueError naming unknown checkpoint tensors or parameters left unloaded.
        Rotary ``inv_freq`` buffers are ignored; with tied embeddings a checkpoint's
        ``lm_head.weight`` (a copy of the embedding) is ignored too.
        """
        params = dict(self.named_parameters())
        modules = dict(self.named_modules())
        expected = _expected_keys(params, modules)
        loaded: set[str] = set()
        unknown: list[str] = []
        for name, tensor in weights:
            if name.endswith("rotary_emb.inv_freq"):
                continue
            if name == "lm_head.weight" and self.args.tie_word_embeddings:
                continue
            key = _load_one(name, tensor, params, modules)
            if key is None:
                unknown.append(name)
            else:
                loaded.add(key)
        if unknown:
            raise ValueError(f"unknown weights for {type(self).__name__}: {sorted(unknown)}")
        missing = sorted(expected - loaded)
        if missing:
            raise ValueError(f"weights missing from the checkpoint: {missing}")


def _expected_keys(params: dict[str, nn.Parameter], modules: dict[str, nn.Module]) -> set[str]:
    """One key per parameter, or per shard of a merged parameter (``name#shard``)."""
    keys: set[str] = set()
    for name in params:
        owner = modules.get(name.rpartition(".")[0])
        if isinstance(owner, MergedLinear):
            keys.update(f"{name}#{i}" for i in range(owner.num_shards))
        else:
            keys.add(name)
    return keys


def _load_one(
    name: str, tensor: torch.Tensor, params: dict[str, nn.Parameter], modules: dict[str, nn.Module]
) -> str | None:
    """Copy one checkpoint tensor into place; returns its loaded key, None if unknown."""
    module_path, _, param_name = name.rpartition(".")
    for merged, hf_name, shard in STACKED_PARAMS:
        if module_path.endswith("." + hf_name):
            target = module_path[: -len(hf_name)] + merged
            owner = modules.get(target)
            if not isinstance(owner, MergedLinear) or getattr(owner, param_name, None) is None:
                return None
            owner.load_shard(param_name, shard, tensor, name)
            return f"{target}.{param_name}#{shard}"
    param = params.get(name)
    if param is None:
        return None
    # sharded layers (tensor parallelism) take their slice of the full tensor themselves
    loader = getattr(modules.get(module_path), "load_weight", None)
    if loader is not None:
        loader(param_name, tensor, name)
    else:
        copy_weight(param, tensor, name)
    return name
