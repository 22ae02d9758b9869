"""Bad input to the loader fails with a ValueError that says what to change; tiny GGUFs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from spm_gguf import finish_gguf

from pagedllm.loader import load_model_source

gguf = pytest.importorskip("gguf")


def _write_gguf(path: Path, arch: str, tensors: dict[str, np.ndarray]) -> Path:
    """A minimal GGUF: hyperparameters, a 4-token byte-level vocabulary, float32 tensors."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(8)
    writer.add_feed_forward_length(16)
    writer.add_head_count(2)
    writer.add_head_count_kv(1)
    writer.add_key_length(4)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(1e6)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(["a", "b", "ab", "<|end|>"])
    writer.add_token_types([1, 1, 1, 3])
    writer.add_token_merges(["a b"])
    writer.add_eos_token_id(3)
    finish_gguf(writer, tensors)
    return path


def _qwen3_tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    shapes = {
        "token_embd.weight": (4, 8),
        "blk.0.attn_norm.weight": (8,),
        "blk.0.attn_q.weight": (8, 8),
        "blk.0.attn_k.weight": (4, 8),
        "blk.0.attn_v.weight": (4, 8),
        "blk.0.attn_output.weight": (8, 8),
        "blk.0.attn_q_norm.weight": (4,),
        "blk.0.attn_k_norm.weight": (4,),
        "blk.0.ffn_norm.weight": (8,),
        "blk.0.ffn_gate.weight": (16, 8),
        "blk.0.ffn_up.weight": (16, 8),
        "blk.0.ffn_down.weight": (8, 16),
        "output_norm.weight": (8,),
    }
    return {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}


def test_tiny_qwen3_gguf_maps_names_without_permuting(tmp_path):
    tensors = _qwen3_tensors()
    path = _write_gguf(tmp_path / "tiny.gguf", "qwen3", tensors)
    source = load_model_source(str(path))
    cfg = source.hf_config
    assert cfg["architectures"] == ["Qwen3ForCausalLM"]
    assert (cfg["head_dim"], cfg["num_key_value_heads"], cfg["vocab_size"]) == (4, 1, 4)
    assert cfg["tie_word_embeddings"] and cfg["rope_theta"] == 1e6
    weights = dict(source.weights())
    # Only llama GGUFs have permuted Q/K rows; qwen3's are stored as HF has them.
    q = weights["model.layers.0.self_attn.q_proj.weight"]
    assert torch.equal(q, torch.from_numpy(tensors["blk.0.attn_q.weight"]))
    assert "model.layers.0.self_attn.k_norm.weight" in weights and len(weights) == 13
    assert source.tokenizer.encode("ab<|end|>") == [2, 3]
    assert source.tokenizer.eos_token_ids == frozenset({3}) and source.name == "tiny"


def test_unsupported_gguf_architecture(tmp_path):
    path = _write_gguf(tmp_path / "x.gguf", "gpt2", _qwen3_tensors())
    with pytest.raises(ValueError, match="architecture 'gpt2' is not supported"):
        load_model_source(str(path))


def test_missing_path():
    with pytest.raises(ValueError, match="does not exist"):
        load_model_source("/nonexistent/model-dir")


def test_bad_load_format():
    with pytest.raises(ValueError, match="load_format must be one of"):
        load_model_source(None, load_format="pickle")


def test_pickle_only_checkpoint(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ValueError, match="pickle"):
        load_model_source(str(tmp_path))


def test_unsupported_hf_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ValueError, match="GPT2LMHeadModel.*not supported"):
        load_model_source(str(tmp_path))
    with pytest.raises(ValueError, match="dummy weights support"):
        load_model_source(str(tmp_path), load_format="dummy")


def test_directory_without_model(tmp_path):
    with pytest.raises(ValueError, match="cannot tell the format"):
        load_model_source(str(tmp_path))


def test_chat_template_errors_are_value_errors():
    from pagedllm.loader.chat_template import render_chat_template
    from pagedllm.loader.dummy import placeholder_tokenizer

    with pytest.raises(ValueError, match="no chat template"):
        placeholder_tokenizer(10).apply_chat_template([{"role": "user", "content": "x"}])

    template = (
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}"
    )
    with pytest.raises(ValueError, match="user first"):
        render_chat_template(template, [{"role": "assistant", "content": "x"}])
    with pytest.raises(TypeError, match="list of dicts"):
        render_chat_template(template, "hello")  # type: ignore[arg-type]


def test_tokenizer_override_keeps_model_eos(tmp_path):
    path = _write_gguf(tmp_path / "tiny.gguf", "qwen3", _qwen3_tensors())
    source = load_model_source(None, tokenizer=str(path))
    assert source.tokenizer.encode("ab") == [2]
    assert source.tokenizer.eos_token_ids == frozenset({2, 3})  # bundled <|im_end|> + tiny's
    with pytest.raises(ValueError, match="no tokenizer"):
        load_model_source(None, load_format="dummy", tokenizer=str(tmp_path.parent))
