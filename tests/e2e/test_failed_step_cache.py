"""Regression (issue 11, item 1): a failed step must never poison the prefix cache.

Before the fix, blocks registered in the prefix cache when a step was scheduled stayed findable
after the step failed; the retry of the same prompt reused never-written KV and answered
garbage. Here the KV pages are poisoned first, so reading an unwritten page cannot go
unnoticed. (A large finite value, not NaN: the tail slots of a request's last page are never
written either, and a masked NaN would still poison a correct softmax.)
"""

from __future__ import annotations

import pytest

from e2e_utils import LONG_CONTEXT, assert_all_blocks_free, hf_greedy
from pagedllm import LLM, SamplingParams

NEW_TOKENS = 6
POISON = 50.0


@pytest.fixture(scope="module")
def llm():
    return LLM(dtype="float32", kv_cache_memory=24 << 20, max_model_len=512, block_size=16)


def _fail_forward_once(monkeypatch, model, on_call: int) -> dict:
    real_forward = model.forward
    calls = {"n": 0}

    def flaky_forward(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == on_call:
            raise RuntimeError("injected forward failure")
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", flaky_forward)
    return calls


@pytest.mark.parametrize("fail_on_call", [1, 2], ids=["prefill", "second-chunk"])
def test_retry_after_a_failed_step_matches_transformers(llm, hf_model, monkeypatch, fail_on_call):
    engine = llm.engine
    for cache in engine.runner.cache.kv_caches:
        cache.fill_(POISON)  # every page that was never written reads as garbage
    engine.scheduler.kv_manager.pool._cached.clear()  # and nothing cached from earlier tests
    for block in engine.scheduler.kv_manager.pool.blocks:
        block.block_hash = None
    prompt = llm.tokenizer.encode(LONG_CONTEXT[:600] + " In short,", add_special_tokens=True)
    assert len(prompt) > 100
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS)
    # a small token budget splits the prompt into chunks: "second-chunk" fails after the first
    # chunk's blocks were written and registered, so those must stay cached and correct
    budget = engine.scheduler.config.max_num_batched_tokens
    engine.scheduler.config.max_num_batched_tokens = 64
    kv = engine.scheduler.kv_manager
    try:
        calls = _fail_forward_once(monkeypatch, engine.runner.model, fail_on_call)
        failed = llm.generate([prompt], params, use_tqdm=False)[0]
        assert calls["n"] >= fail_on_call
        assert failed.outputs[0].finish_reason == "error"
        assert_all_blocks_free(llm)
        kept = kv.pool.num_cached_blocks
        assert kept == (fail_on_call - 1) * 64 // 16, "only blocks of successful steps stay"
        hits_before = kv.prefix_cache_hits
        retry = llm.generate([prompt], params, use_tqdm=False)[0]
    finally:
        engine.scheduler.config.max_num_batched_tokens = budget
    assert retry.outputs[0].token_ids == hf_greedy(hf_model, prompt, NEW_TOKENS)
    assert kv.prefix_cache_hits - hits_before == kept * 16
    assert_all_blocks_free(llm)
