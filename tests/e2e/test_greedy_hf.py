"""The whole engine on the bundled model equals transformers' greedy output, token for token."""

from __future__ import annotations

import pytest

from e2e_utils import MAX_NEW, assert_all_blocks_free, hf_greedy
from pagedllm import LLM, SamplingParams

GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_NEW)


def _check(llm: LLM, prompts: list[list[int]], hf_model) -> None:
    outputs = llm.generate(prompts, GREEDY, use_tqdm=False)
    for prompt, out in zip(prompts, outputs, strict=True):
        assert out.prompt_token_ids == prompt
        assert out.outputs[0].token_ids == hf_greedy(hf_model, prompt), (
            f"prompt of {len(prompt)} tokens diverged from transformers"
        )
    assert_all_blocks_free(llm)


@pytest.mark.parametrize("block_size", [1, 16, 128])
def test_batched_mixed_lengths_match_transformers(block_size, chat_prompts, hf_model):
    llm = LLM(
        dtype="float32", block_size=block_size, kv_cache_memory=64 << 20, max_num_batched_tokens=512
    )
    _check(llm, chat_prompts, hf_model)


def test_preemption_under_memory_pressure_matches(chat_prompts, hf_model):
    # 60 blocks of 16 tokens cannot hold all 8 prompts (one is 600+ tokens) and their outputs
    llm = LLM(dtype="float32", block_size=16, num_gpu_blocks=60, max_num_batched_tokens=256)
    _check(llm, chat_prompts, hf_model)
    assert llm.engine.scheduler.num_preemptions > 0, "the pool was meant to force preemption"


def test_prefix_cache_hits_match(system_prompts, hf_model):
    llm = LLM(dtype="float32", block_size=16, kv_cache_memory=64 << 20)
    # first request alone fills the cache; the rest share its system-prompt blocks
    _check(llm, system_prompts[:1], hf_model)
    kv = llm.engine.scheduler.kv_manager
    hits_before = kv.prefix_cache_hits
    _check(llm, system_prompts[1:], hf_model)
    assert kv.prefix_cache_hits > hits_before
    outputs = llm.generate(system_prompts[1:2], GREEDY, use_tqdm=False)
    assert outputs[0].metrics.num_cached_tokens >= 16


def test_no_prefix_caching_matches(system_prompts, hf_model):
    llm = LLM(dtype="float32", block_size=16, kv_cache_memory=64 << 20, enable_prefix_caching=False)
    _check(llm, system_prompts, hf_model)
    assert llm.engine.scheduler.kv_manager.prefix_cache_hits == 0


def test_multi_step_decoding_matches(chat_prompts, hf_model):
    # rounds of 4 decode steps per host round trip once the prompts are in
    llm = LLM(dtype="float32", block_size=16, kv_cache_memory=64 << 20, num_scheduler_steps=4)
    rounds: list[int] = []
    schedule = llm.engine.scheduler.schedule

    def recording_schedule():
        out = schedule()
        rounds.append(out.num_steps)
        return out

    llm.engine.scheduler.schedule = recording_schedule
    _check(llm, chat_prompts, hf_model)
    assert 4 in rounds
