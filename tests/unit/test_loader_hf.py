"""Hugging Face directories and dummy weights load with HF names, shapes and values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pagedllm.loader import load_model_source
from pagedllm.loader.bundled import BUNDLED_FILE, bundled_model_path
from pagedllm.loader.dummy import param_shapes

transformers = pytest.importorskip("transformers")

VOCAB = 49152  # the bundled tokenizer's size, so it can be saved next to the tiny models
SMALL = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    vocab_size=VOCAB,
    max_position_embeddings=256,
    bos_token_id=1,
    eos_token_id=2,
)


def _config(arch: str, **extra):
    classes = {
        "llama": transformers.LlamaConfig,
        "qwen2": transformers.Qwen2Config,
        "qwen3": transformers.Qwen3Config,
    }
    return classes[arch](**{**SMALL, **extra})


@pytest.fixture(scope="module")
def hf_tokenizer():
    return transformers.AutoTokenizer.from_pretrained(
        bundled_model_path().parent, gguf_file=BUNDLED_FILE
    )


def _save(tmp: Path, config, hf_tokenizer, **save_kwargs):
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(tmp, safe_serialization=True, **save_kwargs)
    hf_tokenizer.save_pretrained(tmp)
    return model


def _check_weights(source, model):
    theirs = model.state_dict()
    ours = dict(source.weights())
    expected = set(theirs)
    if model.config.tie_word_embeddings:
        expected.discard("lm_head.weight")
    assert set(ours) == expected
    for name, tensor in ours.items():
        torch.testing.assert_close(tensor, theirs[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize(
    ("arch", "extra", "save_kwargs"),
    [
        ("llama", {"tie_word_embeddings": False, "rope_theta": 5e5}, {}),
        ("qwen2", {"tie_word_embeddings": False}, {"max_shard_size": "1MB"}),
        ("qwen3", {"tie_word_embeddings": True}, {}),
    ],
)
def test_hf_directory_matches_transformers(tmp_path, hf_tokenizer, arch, extra, save_kwargs):
    model = _save(tmp_path, _config(arch, **extra), hf_tokenizer, **save_kwargs)
    if save_kwargs:
        assert (tmp_path / "model.safetensors.index.json").is_file()
    source = load_model_source(str(tmp_path))
    cfg = source.hf_config
    assert source.load_format == "safetensors" and source.name == tmp_path.name
    assert cfg["architectures"] == [type(model).__name__]
    for key in ("hidden_size", "num_hidden_layers", "num_key_value_heads", "head_dim"):
        assert cfg[key] == SMALL[key]
    assert cfg["tie_word_embeddings"] == extra["tie_word_embeddings"]
    assert cfg["rope_theta"] == model.config.rope_parameters["rope_theta"]
    assert cfg["attention_bias"] == (arch == "qwen2")
    _check_weights(source, model)
    # The shapes a dummy model of this config would get are the real model's shapes.
    expected = {n: tuple(t.shape) for n, t in model.state_dict().items()}
    if extra["tie_word_embeddings"]:
        expected.pop("lm_head.weight")
    assert param_shapes(cfg) == expected


def test_saved_tokenizer_matches_gguf_tokenizer(tmp_path, hf_tokenizer):
    _save(tmp_path, _config("llama"), hf_tokenizer)
    ours = load_model_source(str(tmp_path)).tokenizer
    gguf_tok = load_model_source(None).tokenizer
    for text in ["Hello 🤗 world 123", "<|im_start|>user\nhé<|im_end|>", "  x\n\n y"]:
        assert ours.encode(text) == gguf_tok.encode(text) == hf_tokenizer.encode(text)
        ids = hf_tokenizer.encode(text)
        assert ours.decode(ids) == hf_tokenizer.decode(ids, skip_special_tokens=True)
    messages = [{"role": "user", "content": "hi"}]
    assert ours.apply_chat_template(messages) == gguf_tok.apply_chat_template(messages)
    assert ours.bos_token_id == 1 and 2 in ours.eos_token_ids


def test_generation_config_eos_list_and_chat_template_file(tmp_path, hf_tokenizer):
    _save(tmp_path, _config("llama"), hf_tokenizer)
    (tmp_path / "generation_config.json").write_text(
        json.dumps({"eos_token_id": [2, 0], "temperature": 0.7})
    )
    (tmp_path / "chat_template.jinja").write_text(
        "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{{ eos_token }}{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    source = load_model_source(str(tmp_path))
    assert source.generation_config["eos_token_id"] == [2, 0]
    assert source.generation_config["temperature"] == 0.7
    assert source.tokenizer.eos_token_ids == frozenset({0, 2})
    text = source.tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    assert text == "[user]x<|im_end|>[assistant]"


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_dummy_weights_have_model_names_and_shapes(tmp_path, arch):
    config = _config(arch, vocab_size=1000, tie_word_embeddings=arch == "qwen3")
    config.save_pretrained(tmp_path)
    source = load_model_source(str(tmp_path / "config.json"), load_format="dummy")
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    expected = {n: tuple(t.shape) for n, t in model.state_dict().items()}
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight")
    weights = dict(source.weights())
    assert {n: tuple(t.shape) for n, t in weights.items()} == expected
    assert torch.equal(weights["model.norm.weight"], torch.ones(SMALL["hidden_size"]))
    embed = weights["model.embed_tokens.weight"]
    assert 0.01 < embed.float().std().item() < 0.03
    # Deterministic: the same weights on every call.
    assert torch.equal(dict(source.weights())["model.embed_tokens.weight"], embed)
    # No tokenizer in the directory: a placeholder that decodes any id.
    tok = source.tokenizer
    assert source.load_format == "dummy" and tok.vocab_size == 1000
    assert tok.decode([5, 999]) == "<5> <999>" and tok.eos_token_ids == frozenset({2})


def test_dummy_without_model_uses_bundled_config():
    source = load_model_source(None, load_format="dummy")
    assert source.hf_config["num_hidden_layers"] == 30
    assert source.tokenizer.encode("<|im_start|>") == [1]
    shapes = param_shapes(source.hf_config)
    assert shapes["model.layers.0.self_attn.k_proj.weight"] == (192, 576)
