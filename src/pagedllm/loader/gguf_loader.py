"""Load GGUF files (llama.cpp's format): config from metadata, dequantized float32 weights.

``gguf`` is imported lazily: the GPU image has no ``gguf`` package and must still import the
loader for safetensors and dummy models.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .gguf_tokenizer import build_gguf_tokenizer
from .model_source import ModelSource, WeightIterator

# general.architecture -> (HF architectures[0], HF model_type)
_ARCHITECTURES = {
    "llama": ("LlamaForCausalLM", "llama"),
    "qwen2": ("Qwen2ForCausalLM", "qwen2"),
    "qwen3": ("Qwen3ForCausalLM", "qwen3"),
    "gemma2": ("Gemma2ForCausalLM", "gemma2"),
    "gemma3": ("Gemma3ForCausalLM", "gemma3_text"),
}
_GEMMA = ("gemma2", "gemma3")
_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
# Gemma's four norms per layer (llama.cpp's tensor map: ffn_norm is the *pre*-feed-forward norm)
_GEMMA_LAYER_NAMES = {
    **_LAYER_NAMES,
    "ffn_norm": "pre_feedforward_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
# Precomputed llama3 rope frequencies: the model recomputes them from rope_scaling.
_SKIPPED_TENSORS = {"rope_freqs.weight"}
_LAYER_RE = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")
_FILE_TYPE_DTYPES = {0: "float32", 1: "float16", 32: "bfloat16"}


def _reader(path: Path) -> Any:
    try:
        import gguf
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ValueError("loading a GGUF file needs the `gguf` package: pip install gguf") from exc
    return gguf.GGUFReader(str(path))


def read_metadata(reader: Any) -> dict[str, Any]:
    """All metadata fields as plain Python values (strings, numbers, lists)."""
    meta: dict[str, Any] = {}
    for key, fld in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        meta[key] = fld.contents()
    return meta


def gguf_to_hf_name(name: str, arch: str = "llama") -> str | None:
    """HF parameter name of a GGUF tensor of architecture ``arch``; ``None`` for tensors the
    model does not load."""
    layer_names = _GEMMA_LAYER_NAMES if arch in _GEMMA else _LAYER_NAMES
    if name in _SKIPPED_TENSORS:
        return None
    stem, _, suffix = name.rpartition(".")
    if stem in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[stem]}.{suffix}"
    match = _LAYER_RE.match(name)
    if match and match.group(2) in layer_names:
        layer, part, kind = match.groups()
        return f"model.layers.{layer}.{layer_names[part]}.{kind}"
    raise ValueError(
        f"GGUF tensor {name!r} has no Hugging Face equivalent in pagedllm's loader; "
        "this architecture variant is not supported (use a Hugging Face safetensors directory)"
    )


def _architecture(meta: dict[str, Any]) -> tuple[str, str, str]:
    arch = meta.get("general.architecture")
    if arch not in _ARCHITECTURES:
        raise ValueError(
            f"GGUF architecture {arch!r} is not supported; supported: {sorted(_ARCHITECTURES)} "
            "(or use a Hugging Face safetensors directory)"
        )
    return arch, *_ARCHITECTURES[arch]


def _rope_scaling(meta: dict[str, Any], arch: str) -> dict[str, Any] | None:
    kind = meta.get(f"{arch}.rope.scaling.type")
    factor = meta.get(f"{arch}.rope.scaling.factor")
    if kind in (None, "none") or not factor:
        return None
    scaling: dict[str, Any] = {"rope_type": kind, "factor": float(factor)}
    original = meta.get(f"{arch}.rope.scaling.original_context_length")
    if original:
        scaling["original_max_position_embeddings"] = int(original)
    return scaling


def gguf_hf_config(meta: dict[str, Any], tensor_names: set[str]) -> dict[str, Any]:
    """An HF ``config.json`` dict from GGUF metadata (``{arch}.*`` and ``tokenizer.ggml.*``)."""
    arch, hf_arch, model_type = _architecture(meta)

    def get(key: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{key}", default)

    hidden = int(get("embedding_length"))
    heads = int(get("attention.head_count"))
    kv_heads = get("attention.head_count_kv", heads)
    if isinstance(kv_heads, list):  # per-layer counts: only uniform ones are supported
        if len(set(kv_heads)) != 1:
            raise ValueError("GGUF files with per-layer KV head counts are not supported")
        kv_heads = kv_heads[0]
    # llama stores head_dim as the rotary dimension; newer files (qwen3) as key_length.
    head_dim = get("attention.key_length") or (
        get("rope.dimension_count") if arch == "llama" else None
    )
    vocab = get("vocab_size") or len(meta.get("tokenizer.ggml.tokens", [])) or None
    return {
        "architectures": [hf_arch],
        "model_type": model_type,
        "hidden_size": hidden,
        "intermediate_size": int(get("feed_forward_length")),
        "num_hidden_layers": int(get("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(kv_heads),
        "head_dim": int(head_dim) if head_dim else hidden // heads,
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(get("rope.freq_base", 10000.0)),
        "rope_scaling": _rope_scaling(meta, arch),
        "max_position_embeddings": int(get("context_length", 4096)),
        "vocab_size": int(vocab) if vocab else None,
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "attention_bias": "blk.0.attn_q.bias" in tensor_names,
        "mlp_bias": False,
        "hidden_act": "silu",
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": meta.get("tokenizer.ggml.padding_token_id"),
        # Quantized files dequantize to float32; unquantized ones keep their dtype.
        "torch_dtype": _FILE_TYPE_DTYPES.get(meta.get("general.file_type", -1), "float32"),
        **(
            _gemma_config(get, arch, int(head_dim) if head_dim else hidden // heads)
            if arch in _GEMMA
            else {}
        ),
    }


def _gemma_config(get: Any, arch: str, head_dim: int) -> dict[str, Any]:
    """Gemma 2/3 fields GGUF carries (window, soft-caps) and llama.cpp's fixed ones.

    llama.cpp scales queries by ``head_dim ** -0.5`` (Gemma 2/3 2B-12B; 27B differs and has
    no metadata key), uses 10,000 as the local rope base of Gemma 3, and a 5:1 local/global
    pattern (``sliding_window_pattern`` 6) unless the file says otherwise.
    """
    out: dict[str, Any] = {
        "sliding_window": get("attention.sliding_window"),
        "query_pre_attn_scalar": head_dim,
        "hidden_activation": "gelu_pytorch_tanh",
    }
    if arch == "gemma2":
        out["attn_logit_softcapping"] = get("attn_logit_softcapping")
        out["final_logit_softcapping"] = get("final_logit_softcapping")
    else:
        out["rope_local_base_freq"] = 10000.0
        out["sliding_window_pattern"] = int(get("attention.sliding_window_pattern", 6))
    return out


def unpermute_qk(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's Q/K row permutation (convert_hf_to_gguf's ``permute``).

    llama.cpp stores each head's rotary pairs interleaved (GPT-J style); HF keeps the two halves
    of a head apart (NeoX style). The forward permutation is
    ``w.reshape(n_head, 2, d // 2, ...).swapaxes(1, 2)``; this is its inverse.
    """
    rows = weight.shape[0]
    half = rows // n_head // 2
    w = weight.reshape(n_head, half, 2, *weight.shape[1:])
    return w.transpose(1, 2).reshape(weight.shape).contiguous()


def _eos_ids(meta: dict[str, Any]) -> list[int]:
    """Primary EOS first, then llama.cpp's end-of-turn / end-of-message ids."""
    keys = ("eos_token_id", "eot_token_id", "eom_token_id")
    ids = [meta.get(f"tokenizer.ggml.{k}") for k in keys]
    return list(dict.fromkeys(int(i) for i in ids if i is not None))


def iter_gguf_weights(reader: Any, hf_config: dict[str, Any]) -> WeightIterator:
    """Yield ``(hf_name, float32 tensor)`` for every tensor of an open ``GGUFReader``,
    dequantized one at a time."""
    from gguf.quants import dequantize

    permute = hf_config["model_type"] == "llama"
    arch = _gguf_arch(hf_config)
    # llama.cpp stores Gemma's RMSNorm weights with the model's "1 +" folded in
    unfold_norms = arch in _GEMMA
    heads = hf_config["num_attention_heads"]
    kv_heads = hf_config["num_key_value_heads"]
    for tensor in reader.tensors:
        hf_name = gguf_to_hf_name(tensor.name, arch)
        if hf_name is None:
            continue
        array = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        if not array.flags.writeable:  # unquantized tensors are views of the read-only mmap
            array = array.copy()
        # ggml lists dims fastest-first; numpy's shape is the reverse (HF's [out, in]).
        shape = [int(d) for d in reversed(tensor.shape)]
        weight = torch.from_numpy(np.ascontiguousarray(array.reshape(shape)))
        if unfold_norms and hf_name.endswith("norm.weight"):
            weight -= 1.0
        if permute and ".self_attn.q_proj." in hf_name:
            weight = unpermute_qk(weight, heads)
        elif permute and ".self_attn.k_proj." in hf_name:
            weight = unpermute_qk(weight, kv_heads)
        yield hf_name, weight


def _gguf_arch(hf_config: dict[str, Any]) -> str:
    """The GGUF architecture name of a config this loader built."""
    hf_arch = hf_config["architectures"][0]
    return next(k for k, (a, _) in _ARCHITECTURES.items() if a == hf_arch)


def load_gguf(path: Path, name: str | None = None) -> ModelSource:
    """A ``ModelSource`` for one GGUF file (config, tokenizer and chat template all inside).

    The reader (a memory map) is kept for ``weights()``: opening one parses every metadata
    field in Python, which takes seconds for a 49k-token vocabulary.
    """
    reader = _reader(path)
    meta = read_metadata(reader)
    tensor_names = {t.name for t in reader.tensors}
    hf_config = gguf_hf_config(meta, tensor_names)
    arch = _gguf_arch(hf_config)
    for tensor_name in tensor_names:
        gguf_to_hf_name(tensor_name, arch)  # fail now, not halfway through loading
    eos_ids = _eos_ids(meta)
    tokenizer = build_gguf_tokenizer(meta, eos_ids)
    generation_config: dict[str, Any] = {
        "bos_token_id": hf_config["bos_token_id"],
        "eos_token_id": eos_ids[0] if len(eos_ids) == 1 else eos_ids,
        "pad_token_id": hf_config["pad_token_id"],
    }
    return ModelSource(
        hf_config=hf_config,
        tokenizer=tokenizer,
        generation_config=generation_config,
        name=name or path.stem,
        path=str(path),
        load_format="gguf",
        _weights_fn=lambda: iter_gguf_weights(reader, hf_config),
        num_tensors=sum(gguf_to_hf_name(t, arch) is not None for t in tensor_names),
    )
