"""Tiny random-weight Llama (llama3 rope scaling), Qwen2 and Qwen3 checkpoints written by
transformers: the whole engine, loading them from a Hugging Face directory, equals transformers'
greedy ``generate`` token for token, batched with mixed lengths and under preemption."""

from __future__ import annotations

import pytest
import torch
import transformers
from hybrid_models import hf_greedy, write_tokenizer

from e2e_utils import assert_all_blocks_free
from pagedllm import LLM, SamplingParams

VOCAB = 384
MAX_NEW = 20
PROMPT_LENS = [3, 21, 47, 80, 9]  # mixed: under one block, several blocks, five blocks

COMMON = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=VOCAB,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
    attn_implementation="eager",
)

ARCHS = {
    "llama3": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(
            tie_word_embeddings=False,
            rope_parameters=dict(
                rope_type="llama3",
                rope_theta=500000.0,
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                # small, so that the prompts' positions fall in every band of the scaling
                original_max_position_embeddings=32,
            ),
        ),
    ),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(tie_word_embeddings=True)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(tie_word_embeddings=False, head_dim=32)),
}


def _save_tiny_model(name: str, directory):
    config_cls, arch, extra = ARCHS[name]
    torch.manual_seed(0)
    config = getattr(transformers, config_cls)(**COMMON, **extra)
    model = getattr(transformers, arch)(config).eval()
    with torch.no_grad():  # larger than HF's init so logits are far from ties
        for pname, p in model.named_parameters():
            if "norm" in pname:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))
    model.save_pretrained(directory, safe_serialization=True)
    write_tokenizer(directory, VOCAB)
    assert list(directory.glob("*.safetensors")), "the checkpoint must be safetensors"
    return model


def _prompts() -> list[list[int]]:
    gen = torch.Generator().manual_seed(1234)
    return [torch.randint(0, VOCAB, (n,), generator=gen).tolist() for n in PROMPT_LENS]


@pytest.mark.parametrize("name", list(ARCHS))
def test_tiny_model_matches_transformers_under_preemption(name, tmp_path):
    hf = _save_tiny_model(name, tmp_path)
    prompts = _prompts()
    expected = [hf_greedy(hf, p, MAX_NEW) for p in prompts]
    # the prompts and outputs need 19 blocks of 16 tokens in all; 8 force preemption
    llm = LLM(model=str(tmp_path), dtype="float32", block_size=16, num_gpu_blocks=8)
    assert llm.engine.model_config["architectures"] == [ARCHS[name][1]]
    params = SamplingParams(temperature=0.0, max_tokens=MAX_NEW, ignore_eos=True)
    outputs = llm.generate(prompts, params, use_tqdm=False)
    assert llm.engine.scheduler.num_preemptions > 0, "the small pool was meant to preempt"
    for prompt, want, out in zip(prompts, expected, outputs, strict=True):
        assert out.prompt_token_ids == prompt
        completion = out.outputs[0]
        assert completion.token_ids == want, f"{name}: prompt of {len(prompt)} tokens diverged"
        assert completion.finish_reason == "length"
        # the placeholder tokenizer spells each id, so the text is checkable too
        assert completion.text.split() == [f"<{t}>" for t in want]
    assert_all_blocks_free(llm)
    # a second, unpressured pass over the same engine (prefix-cache hits now) agrees as well
    again = llm.generate(prompts[:2], params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in again] == expected[:2]
    assert_all_blocks_free(llm)
