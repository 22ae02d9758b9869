"""Dummy (random) weights for a real architecture: benchmarks without downloading weights.

The config comes from a ``config.json`` (or a directory holding one), a GGUF file's metadata, or
the bundled model when no path is given. The tokenizer is the directory's ``tokenizer.json`` or
the GGUF's vocabulary when there is one; otherwise a *placeholder* tokenizer whose token ``i`` is
spelled ``<i>``: ``decode`` works for any id (so the detokenizer and server run unchanged) but
``encode`` of real text is meaningless and there is no chat template; benchmarks pass token ids.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import pre_tokenizers
from tokenizers.models import WordLevel

from .hf_loader import (
    SUPPORTED_ARCHITECTURES,
    check_architectures,
    fill_config_defaults,
    read_generation_config,
    read_json,
)
from .hf_tokenizer import has_hf_tokenizer, load_hf_tokenizer
from .model_source import ModelSource, WeightIterator
from .tokenizer import Tokenizer

_INIT_STD = 0.02  # HF's initializer_range: keeps activations finite through deep stacks


def _layer_shapes(cfg: dict[str, Any], arch: str, prefix: str) -> dict[str, tuple[int, ...]]:
    hidden, inter, head_dim = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    q_out = cfg["num_attention_heads"] * head_dim
    kv_out = cfg["num_key_value_heads"] * head_dim
    attn = f"{prefix}.self_attn"
    shapes: dict[str, tuple[int, ...]] = {
        f"{prefix}.input_layernorm.weight": (hidden,),
        f"{prefix}.post_attention_layernorm.weight": (hidden,),
        f"{attn}.q_proj.weight": (q_out, hidden),
        f"{attn}.k_proj.weight": (kv_out, hidden),
        f"{attn}.v_proj.weight": (kv_out, hidden),
        f"{attn}.o_proj.weight": (hidden, q_out),
        f"{prefix}.mlp.gate_proj.weight": (inter, hidden),
        f"{prefix}.mlp.up_proj.weight": (inter, hidden),
        f"{prefix}.mlp.down_proj.weight": (hidden, inter),
    }
    if cfg.get("attention_bias"):
        shapes.update({f"{attn}.q_proj.bias": (q_out,), f"{attn}.k_proj.bias": (kv_out,)})
        shapes[f"{attn}.v_proj.bias"] = (kv_out,)
        if arch != "Qwen2ForCausalLM":  # Qwen2 biases q/k/v only; Llama/Qwen3 also o_proj
            shapes[f"{attn}.o_proj.bias"] = (hidden,)
    if arch in ("Qwen3ForCausalLM", "Gemma3ForCausalLM"):
        shapes.update({f"{attn}.q_norm.weight": (head_dim,), f"{attn}.k_norm.weight": (head_dim,)})
    if arch.startswith("Gemma"):  # sandwich norms around the MLP too
        shapes[f"{prefix}.pre_feedforward_layernorm.weight"] = (hidden,)
        shapes[f"{prefix}.post_feedforward_layernorm.weight"] = (hidden,)
    if cfg.get("mlp_bias"):
        for proj, size in (("gate_proj", inter), ("up_proj", inter), ("down_proj", hidden)):
            shapes[f"{prefix}.mlp.{proj}.bias"] = (size,)
    return shapes


def param_shapes(hf_config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """HF parameter name -> shape for a supported architecture (no ``lm_head`` when tied)."""
    arch = (hf_config.get("architectures") or [None])[0]
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"dummy weights support {list(SUPPORTED_ARCHITECTURES)}, not {arch!r}; "
            "pass a config.json of one of those"
        )
    cfg = dict(hf_config)
    fill_config_defaults(cfg)
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (cfg["vocab_size"], cfg["hidden_size"])
    }
    for layer in range(cfg["num_hidden_layers"]):
        shapes.update(_layer_shapes(cfg, arch, f"model.layers.{layer}"))
    shapes["model.norm.weight"] = (cfg["hidden_size"],)
    if not cfg.get("tie_word_embeddings", False):
        shapes["lm_head.weight"] = (cfg["vocab_size"], cfg["hidden_size"])
    return shapes


def iter_dummy_weights(
    hf_config: dict[str, Any],
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> WeightIterator:
    """Random weights, one tensor at a time: matrices ~ N(0, 0.02^2), norms 1, biases 0
    (Gemma's norms scale by ``1 + weight``, so theirs are 0).

    ``device`` lets GPU benchmarks generate in place instead of filling gigabytes on the CPU.
    The same ``seed``, dtype and device give the same weights.
    """
    dtype = dtype or _config_dtype(hf_config)
    generator = torch.Generator(device=device).manual_seed(seed)
    arch = (hf_config.get("architectures") or [""])[0]
    norm_fill = 0.0 if arch.startswith("Gemma") else 1.0
    for name, shape in param_shapes(hf_config).items():
        if name.endswith(("norm.weight", "layernorm.weight")):
            yield name, torch.full(shape, norm_fill, dtype=dtype, device=device)
        elif name.endswith(".bias"):
            yield name, torch.zeros(shape, dtype=dtype, device=device)
        else:
            tensor = torch.empty(shape, dtype=dtype, device=device)
            yield name, tensor.normal_(0.0, _INIT_STD, generator=generator)


def _config_dtype(hf_config: dict[str, Any]) -> torch.dtype:
    name = str(hf_config.get("torch_dtype") or "float32").removeprefix("torch.")
    dtype = getattr(torch, name, None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


def placeholder_tokenizer(vocab_size: int, eos_token_ids: Iterable[int] = ()) -> Tokenizer:
    """A tokenizer that spells token ``i`` as ``<i>`` (for dummy models without a vocabulary)."""
    vocab = {f"<{i}>": i for i in range(vocab_size)}
    backend = BackendTokenizer(WordLevel(vocab, unk_token="<0>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return Tokenizer(backend, eos_token_ids=eos_token_ids)


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list) else [int(value)]


def _config_and_tokenizer(path: Path | None) -> tuple[dict[str, Any], Tokenizer | None, dict]:
    """(hf_config, tokenizer or None, generation_config) for a dummy model's config source."""
    if path is None or path.suffix == ".gguf":
        from .bundled import bundled_model_path
        from .gguf_loader import load_gguf

        source = load_gguf(path or bundled_model_path())
        return dict(source.hf_config), source.tokenizer, source.generation_config
    directory = path if path.is_dir() else path.parent
    config_path = path / "config.json" if path.is_dir() else path
    if not config_path.is_file():
        raise ValueError(f"dummy weights need a config.json; none at {config_path}")
    config = read_json(config_path)
    check_architectures(config, config_path)
    fill_config_defaults(config)
    config.setdefault("tie_word_embeddings", False)
    generation_config = read_generation_config(directory)
    tokenizer = None
    if has_hf_tokenizer(directory):
        tokenizer = load_hf_tokenizer(directory, config, generation_config)
    return config, tokenizer, generation_config


def load_dummy(path: Path | None, name: str | None = None) -> ModelSource:
    """A ``ModelSource`` with the architecture of ``path`` and random weights."""
    config, tokenizer, generation_config = _config_and_tokenizer(path)
    param_shapes(config)  # reject unsupported architectures now
    if tokenizer is None:
        eos = _ids(generation_config.get("eos_token_id")) + _ids(config.get("eos_token_id"))
        tokenizer = placeholder_tokenizer(int(config["vocab_size"]), eos)
    if name is None and path is not None:
        # A config.json names its directory; any other file (qwen3-0.6b.json, x.gguf) itself.
        by_dir = path.is_dir() or path.name == "config.json"
        name = (path if path.is_dir() else path.parent).name if by_dir else path.stem
    return ModelSource(
        hf_config=config,
        tokenizer=tokenizer,
        generation_config=generation_config,
        name=name or "dummy",
        path=str(path or ""),
        load_format="dummy",
        _weights_fn=lambda: iter_dummy_weights(config),
    )
