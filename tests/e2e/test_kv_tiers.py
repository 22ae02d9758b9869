"""Host and disk tiers of the prefix cache on the bundled model (CPU, float32).

A conversation's blocks are evicted from a small device pool by other traffic; its next turn
must find them in the host tier (or on disk) and produce exactly the output it produces with
the tiers off. The disk tier survives an engine restart and never serves a corrupted entry.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from e2e_utils import LONG_CONTEXT, QUESTIONS, SYSTEM, assert_all_blocks_free, chat_ids
from pagedllm import LLM, SamplingParams

BLOCK = 8
GREEDY = SamplingParams(temperature=0.0, max_tokens=8)
# 24 blocks of 8 tokens: one conversation plus one other prompt at a time
BASE = dict(dtype="float32", block_size=BLOCK, num_gpu_blocks=24, max_num_batched_tokens=256)


def _block_bytes(llm: LLM) -> int:
    return llm.engine.runner.kv_spec.bytes_per_block


def _others(tok, n: int = 3) -> list[list[int]]:
    """Other traffic: ``n`` prompts that share nothing with the conversation."""
    text = LONG_CONTEXT[:500]
    return [chat_ids(tok, [{"role": "user", "content": f"{q} {text}"}]) for q in QUESTIONS[:n]]


def _conversation(llm: LLM, tok) -> tuple[int, int, list[int], list[int]]:
    """Turn 1, other traffic, turn 2: (turn-1 KV tokens, turn-2 cached tokens, outputs)."""
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTIONS[3]}]
    first = llm.generate([chat_ids(tok, msgs)], GREEDY, use_tqdm=False)[0]
    answer = first.outputs[0].token_ids
    for prompt in _others(tok):
        llm.generate([prompt], GREEDY, use_tqdm=False)
    history = first.prompt_token_ids + list(answer)
    second = llm.generate([history + tok.encode(" And why?")], GREEDY, use_tqdm=False)[0]
    # the last sampled token of turn 1 was never fed back, so its KV does not exist
    return len(history) - 1, second.num_cached_tokens, answer, second.outputs[0].token_ids


def _assert_tiers_sound(llm: LLM) -> None:
    assert_all_blocks_free(llm)
    kv = llm.engine.scheduler.kv_manager
    kv.host.check()
    assert kv.host.num_swap == 0 and kv.host.num_cached <= kv.host.num_pages
    if kv.tiers.disk is not None:
        assert len(kv.tiers.disk) <= kv.tiers.disk.capacity


@pytest.fixture(scope="module")
def without_tier(hf_tokenizer):
    llm = LLM(**BASE)
    result = _conversation(llm, hf_tokenizer)
    assert_all_blocks_free(llm)
    return result


def test_host_tier_serves_the_next_turn_with_identical_output(hf_tokenizer, without_tier):
    llm = LLM(**BASE, cpu_cache_memory=1)  # sized below, from the block size
    per_block = _block_bytes(llm)
    llm = LLM(**BASE, cpu_cache_memory=64 * per_block)
    prev, cached, answer, second = _conversation(llm, hf_tokenizer)
    prev_off, cached_off, answer_off, second_off = without_tier
    assert (answer, second) == (answer_off, second_off), "greedy output changed with the tier"
    assert cached >= 0.9 * prev, (prev, cached)
    assert cached_off <= 0.1 * prev_off, "without the tier the history was meant to be evicted"
    stats = llm.engine.stats()
    assert stats.host_tier_hit_blocks * BLOCK >= 0.9 * prev
    assert stats.tier_bytes_to_device == stats.host_tier_hit_blocks * per_block
    assert stats.tier_bytes_to_host > 0 and stats.host_tier_blocks > 0
    _assert_tiers_sound(llm)


def _disk_llm(path: Path, per_block: int) -> LLM:
    # a host tier of 16 pages (one step evicts up to ~16 blocks: each needs a page that step)
    return LLM(
        **BASE,
        cpu_cache_memory=16 * per_block,
        kv_disk_path=str(path),
        kv_disk_bytes=400 * per_block,
    )


def test_disk_tier_survives_a_restart_and_skips_corrupted_entries(hf_tokenizer, tmp_path):
    per_block = _block_bytes(LLM(**BASE))
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTIONS[5]}]
    prompt = chat_ids(hf_tokenizer, msgs)
    llm = _disk_llm(tmp_path, per_block)
    reference = llm.generate([prompt], GREEDY, use_tqdm=False)[0].outputs[0].token_ids
    # evict the prompt: device -> host -> disk (its first block, evicted last, included)
    for other in _others(hf_tokenizer, 5):
        llm.generate([other], GREEDY, use_tqdm=False)
    _assert_tiers_sound(llm)
    assert llm.engine.stats().disk_bytes_written > 0
    del llm

    restarted = _disk_llm(tmp_path, per_block)
    out = restarted.generate([prompt], GREEDY, use_tqdm=False)[0]
    assert out.outputs[0].token_ids == reference
    assert out.num_cached_tokens >= 0.9 * (len(prompt) // BLOCK) * BLOCK - BLOCK
    assert restarted.engine.stats().disk_tier_hit_blocks > 0
    _assert_tiers_sound(restarted)
    del restarted

    for file in tmp_path.glob("*.kv"):  # flip one payload byte of every entry
        data = bytearray(file.read_bytes())
        data[-100] ^= 0x01
        file.write_bytes(bytes(data))
    corrupted = _disk_llm(tmp_path, per_block)
    assert len(corrupted.engine.scheduler.kv_manager.tiers.disk) == 0
    out = corrupted.generate([prompt], GREEDY, use_tqdm=False)[0]
    assert out.num_cached_tokens == 0 and out.outputs[0].token_ids == reference
    _assert_tiers_sound(corrupted)


def test_bench_multiturn_saves_prefill_with_the_host_tier():
    """``pagedllm bench multiturn`` at tiny sizes: identical answers off vs on, the on run
    loads its histories (prefill saved, bytes moved = the timed copies' bytes)."""
    from pagedllm.benchmark.multiturn import MultiTurnSpec, compare, format_table
    from pagedllm.config import EngineConfig
    from pagedllm.engine.llm_engine import LLMEngine
    from pagedllm.loader.bundled import bundled_model_path

    # histories of ~80 tokens (10-11 blocks); the pool of 12 holds one, the next waves evict it
    spec = MultiTurnSpec(3, 2, 16, 8, 4, 1, doc_len=40)
    options = {**BASE, "num_gpu_blocks": 12}

    def make_engine(cpu_cache_memory: int) -> LLMEngine:
        config = EngineConfig.from_flat(
            model=str(bundled_model_path()), cpu_cache_memory=cpu_cache_memory, **options
        )
        return LLMEngine.from_config(config.validate())

    result = compare(make_engine, spec, 8 << 20)
    off, on = result["runs"]
    assert result["outputs_identical"], format_table(result)
    assert off["host_tier_hit_blocks"] == 0 and off["tier_bytes_to_device"] == 0
    assert on["host_tier_hit_blocks"] > 0
    assert on["prefill_tokens_saved"] >= off["prefill_tokens_saved"] + 3 * 40
    assert on["copies"]["to_device"]["bytes"] == on["tier_bytes_to_device"] > 0
    assert on["load_seconds"] > 0 and on["load_GBps"] > 0
    assert "TTFT p50 speedup" in format_table(result)
    with pytest.raises(ValueError, match="concurrency"):
        MultiTurnSpec(concurrency=0).validate()
