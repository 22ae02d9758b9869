"""Tiny random Gemma 2, Gemma 3, Mistral and Qwen2-with-window checkpoints written by
transformers, and their greedy references (``attn_implementation="eager"``, float32)."""

from __future__ import annotations

import torch
import transformers
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import pre_tokenizers
from tokenizers.models import WordLevel

VOCAB = 256
WINDOW = 8  # prompts of 32-80 tokens are 4-10x the window

COMMON = dict(
    hidden_size=64,
    intermediate_size=96,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    vocab_size=VOCAB,
    max_position_embeddings=512,
    rms_norm_eps=1e-5,
    sliding_window=WINDOW,
    attn_implementation="eager",
)

ARCHS = {
    "gemma2": (
        "Gemma2Config",
        "Gemma2ForCausalLM",
        dict(
            num_hidden_layers=4,
            query_pre_attn_scalar=24,
            attn_logit_softcapping=5.0,  # small, so the cap really bends the scores
            final_logit_softcapping=4.0,
        ),
    ),
    "gemma3": (
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        dict(
            num_hidden_layers=4,
            layer_types=["sliding_attention"] * 3 + ["full_attention"],
            query_pre_attn_scalar=16,
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
            },
        ),
    ),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(num_hidden_layers=2)),
    "qwen2": (
        "Qwen2Config",
        "Qwen2ForCausalLM",
        dict(num_hidden_layers=3, use_sliding_window=True, max_window_layers=1),
    ),
}


def write_tokenizer(directory, vocab_size: int = VOCAB) -> None:
    """A word-level tokenizer spelling token i as ``<i>``: the engine needs tokenizer.json."""
    vocab = {f"<{i}>": i for i in range(vocab_size)}
    backend = BackendTokenizer(WordLevel(vocab, unk_token="<0>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.save(str(directory / "tokenizer.json"))


def save_tiny_model(name: str, directory, **overrides):
    """Build the tiny ``name`` model with seeded weights, save it (safetensors), return it."""
    config_cls, arch, extra = ARCHS[name]
    torch.manual_seed(0)
    config = getattr(transformers, config_cls)(**{**COMMON, **extra, **overrides})
    model = getattr(transformers, arch)(config).eval()
    with torch.no_grad():  # larger than HF's init so logits are far from ties
        for pname, p in model.named_parameters():
            if "norm" in pname:
                p.copy_(0.2 * torch.randn_like(p) + (0.0 if "gemma" in name else 1.0))
            elif "gemma" in name and "embed" in pname:
                # Gemma scales embeddings by sqrt(hidden): keep them from drowning the layers
                p.copy_(0.02 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))
    model.save_pretrained(directory, safe_serialization=True)
    write_tokenizer(directory, config.vocab_size)
    return model


def hf_greedy(model, prompt: list[int], max_new: int) -> list[int]:
    """transformers' greedy continuation of ``prompt`` (exactly ``max_new`` tokens)."""
    model.generation_config.eos_token_id = None
    with torch.inference_mode():
        ids = torch.tensor([prompt])
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    new = out[0, len(prompt) :].tolist()
    assert len(new) == max_new
    return new


def prompts(lengths: list[int], seed: int = 1234) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=gen).tolist() for n in lengths]
