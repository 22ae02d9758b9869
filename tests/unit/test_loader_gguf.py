"""The bundled GGUF loads exactly as transformers loads it (config, weights, tokenizer)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pagedllm.loader import load_model_source
from pagedllm.loader.bundled import BUNDLED_FILE, bundled_model_path
from pagedllm.loader.gguf_loader import unpermute_qk

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def source():
    return load_model_source(None)


@pytest.fixture(scope="module")
def gguf_dir() -> Path:
    return bundled_model_path().parent


@pytest.fixture(scope="module")
def hf_tokenizer(gguf_dir):
    return transformers.AutoTokenizer.from_pretrained(gguf_dir, gguf_file=BUNDLED_FILE)


@pytest.fixture(scope="module")
def hf_model(gguf_dir):
    return transformers.AutoModelForCausalLM.from_pretrained(
        gguf_dir, gguf_file=BUNDLED_FILE, torch_dtype=torch.float32
    )


def test_config_matches_transformers(source, hf_model):
    ours, theirs = source.hf_config, hf_model.config
    assert ours["architectures"] == ["LlamaForCausalLM"]
    for key in (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "vocab_size",
        "max_position_embeddings",
        "tie_word_embeddings",
        "bos_token_id",
        "eos_token_id",
    ):
        assert ours[key] == getattr(theirs, key), key
    assert ours["rms_norm_eps"] == pytest.approx(theirs.rms_norm_eps)
    assert ours["rope_theta"] == pytest.approx(theirs.rope_parameters["rope_theta"])
    assert (ours["num_hidden_layers"], ours["num_key_value_heads"]) == (30, 3)
    assert source.name == "SmolLM2-135M-Instruct"
    assert source.load_format == "gguf"


def test_weights_equal_transformers_dequantized(source, hf_model):
    theirs = hf_model.state_dict()
    ours = dict(source.weights())
    # Tied: lm_head is the embedding, so the loader leaves it out (HF checkpoints do too).
    assert "lm_head.weight" not in ours
    assert set(ours) == set(theirs) - {"lm_head.weight"}
    for name, tensor in ours.items():
        assert tensor.dtype == torch.float32, name
        assert tensor.shape == theirs[name].shape, name
        torch.testing.assert_close(tensor, theirs[name].float(), rtol=0, atol=1e-6, msg=name)


def test_unpermute_inverts_llama_cpp_permute():
    n_head, head_dim, cols = 3, 8, 5
    hf = torch.arange(n_head * head_dim * cols, dtype=torch.float32).reshape(-1, cols)
    # convert_hf_to_gguf.py's permute, written out here as the reference.
    gguf = hf.reshape(n_head, 2, head_dim // 2, cols).swapaxes(1, 2).reshape(hf.shape)
    assert not torch.equal(gguf, hf)
    torch.testing.assert_close(unpermute_qk(gguf, n_head), hf)


TEXTS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "naïve café — Zürich, 東京, Привет мир",
    "emoji 🤗🚀 and 👩‍👩‍👧",
    "def f(x):\n    return x ** 2  # square\n\n\tindent",
    "numbers 123 4567 3.14159 1,000,000 2024-01-02",
    "spaces    and\n\n\nnewlines   \t end   ",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>text<repo_name>x",
    "I'm sure they've done it, haven't they? YOU'LL see",
    "",
]


@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_matches_transformers(source, hf_tokenizer, text):
    tok = source.tokenizer
    ids = tok.encode(text)
    assert ids == hf_tokenizer.encode(text, add_special_tokens=False)
    # SmolLM2's GGUF says add_bos_token=False: transformers adds nothing, and neither do we.
    assert tok.encode(text, add_special_tokens=True) == hf_tokenizer.encode(text)
    assert tok.decode(ids, skip_special_tokens=False) == text
    assert tok.decode(ids) == hf_tokenizer.decode(ids, skip_special_tokens=True)


def test_tokenizer_attributes(source, hf_tokenizer):
    tok = source.tokenizer
    assert tok.vocab_size == 49152 == len(hf_tokenizer)
    assert tok.bos_token_id == 1 and tok.eos_token_ids == frozenset({2})
    assert tok.eos_token == "<|im_end|>"
    assert set(hf_tokenizer.all_special_ids) <= set(tok.all_special_ids)
    assert tok.encode("<|im_start|>") == [1]
    assert tok.convert_ids_to_tokens(tok.encode(" hello")) == ["Ġhello"]
    assert tok.backend.get_vocab_size() == 49152


CONVERSATIONS = [
    [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And times 3? 🤔"},
    ],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a color."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another."},
    ],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_matches_transformers(source, hf_tokenizer, messages, add_generation_prompt):
    kwargs = {"add_generation_prompt": add_generation_prompt}
    ours = source.tokenizer.apply_chat_template(messages, **kwargs)
    theirs = hf_tokenizer.apply_chat_template(messages, tokenize=True, **kwargs)
    if isinstance(theirs, dict) or hasattr(theirs, "input_ids"):
        theirs = theirs["input_ids"]
    assert ours == list(theirs)
    text = source.tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    assert text == hf_tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    assert text.endswith("<|im_start|>assistant\n") == add_generation_prompt
