"""Preemption by swapping: greedy outputs under heavy memory pressure equal the unpressured run
(and transformers), whether preempted requests are swapped to CPU, recomputed, or chosen by AUTO;
no device or CPU block leaks; a request larger than the swap space falls back to recompute."""

from __future__ import annotations

import pytest

from e2e_utils import LONG_CONTEXT, QUESTIONS, assert_all_blocks_free, chat_ids, hf_greedy
from pagedllm import LLM, SamplingParams

MAX_TOKENS = 16
GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)
BLOCK = 16
# 12 blocks of 16 tokens (the short prompts share their chat-template prefix blocks): 2-5
# requests at a time. The whole long prompt fits one step, so once admitted it holds >= 10 blocks.
PRESSURE = dict(dtype="float32", block_size=BLOCK, num_gpu_blocks=12, max_num_batched_tokens=512)
LONG = 2  # index of the long prompt: admitted early, as the newest, so it is the first victim


@pytest.fixture(scope="module")
def prompts(hf_tokenizer) -> list[list[int]]:
    """7 short chat prompts (35-40 tokens) and, at index LONG, one of ~150 tokens."""
    convs = [[{"role": "user", "content": q}] for q in QUESTIONS]
    medium = LONG_CONTEXT[: len(LONG_CONTEXT) // 8] + "Summarize the passage."
    convs.insert(LONG, [{"role": "user", "content": medium}])
    out = [chat_ids(hf_tokenizer, c) for c in convs]
    assert 8 * BLOCK < len(out[LONG]) < 12 * BLOCK - MAX_TOKENS
    return out


@pytest.fixture(scope="module")
def reference(prompts) -> list[list[int]]:
    """Outputs with no memory pressure at all."""
    llm = LLM(dtype="float32", block_size=BLOCK, kv_cache_memory=64 << 20)
    outputs = llm.generate(prompts, GREEDY, use_tqdm=False)
    assert llm.engine.scheduler.num_preemptions == 0
    assert_all_blocks_free(llm)
    return [o.outputs[0].token_ids for o in outputs]


def _bytes_per_block(llm: LLM) -> int:
    return llm.engine.runner.kv_spec.bytes_per_block


def _run_counting_swaps(llm: LLM, prompts: list[list[int]]) -> tuple[list, dict[str, int]]:
    """Generate while counting the swap pairs the scheduler hands to the runner."""
    sched = llm.engine.scheduler
    counts = {"out": 0, "in": 0}
    schedule = sched.schedule

    def counting_schedule():
        out = schedule()
        counts["out"] += len(out.blocks_to_swap_out)
        counts["in"] += len(out.blocks_to_swap_in)
        return out

    sched.schedule = counting_schedule
    return llm.generate(prompts, GREEDY, use_tqdm=False), counts


def _assert_nothing_leaked(llm: LLM) -> None:
    assert_all_blocks_free(llm)
    kv = llm.engine.scheduler.kv_manager
    assert kv.num_cpu_free_blocks == kv.num_cpu_blocks, "CPU swap blocks leaked"
    assert llm.engine.scheduler.num_swapped == 0


def test_reference_matches_transformers(prompts, reference, hf_model):
    for i in (0, LONG, len(prompts) - 1):  # two short prompts and the long one
        assert reference[i] == hf_greedy(hf_model, prompts[i], MAX_TOKENS)


@pytest.mark.parametrize("mode", ["recompute", "swap", "auto"])
def test_outputs_identical_under_pressure(mode, prompts, reference):
    llm = LLM(**PRESSURE, preemption_mode=mode, swap_space=64 << 20)
    outputs, swaps = _run_counting_swaps(llm, prompts)
    assert [o.outputs[0].token_ids for o in outputs] == reference
    sched = llm.engine.scheduler
    assert sched.num_preemptions > 0, "the pool was meant to force preemption"
    if mode == "recompute":
        assert swaps == {"out": 0, "in": 0}
    else:
        if mode == "auto":
            costs = sched.preemption_costs
            assert costs.swap_bytes_per_s > 0 and costs.prefill_tokens_per_s > 0
            # a host memcpy moves a block far faster than the CPU recomputes its 16 tokens
            assert costs.prefer_swap(1, BLOCK)
        assert sched.num_swap_outs > 0
        assert swaps["out"] == swaps["in"] == sched.num_blocks_swapped_out > 0
        assert sum(o.metrics.num_preemptions for o in outputs) == sched.num_preemptions
    _assert_nothing_leaked(llm)


def test_request_larger_than_swap_space_falls_back_to_recompute(prompts, reference, hf_model):
    cfg = hf_model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    # K and V of every layer, float32
    per_block = 2 * cfg.num_hidden_layers * BLOCK * cfg.num_key_value_heads * head_dim * 4
    # 6 CPU blocks: room for a short request (<= 4 blocks), never for the long one (>= 10)
    llm = LLM(**PRESSURE, preemption_mode="swap", swap_space=6 * per_block)
    assert _bytes_per_block(llm) == per_block
    assert llm.engine.scheduler.kv_manager.num_cpu_blocks == 6
    outputs, swaps = _run_counting_swaps(llm, prompts)
    assert [o.outputs[0].token_ids for o in outputs] == reference
    sched = llm.engine.scheduler
    assert outputs[LONG].metrics.num_preemptions > 0, "the long request was meant to be preempted"
    assert sched.num_preemptions > sched.num_swap_outs, "no preemption fell back to recompute"
    assert sched.num_swap_outs > 0, "short requests still fit the swap space"
    assert swaps["out"] == swaps["in"] > 0
    _assert_nothing_leaked(llm)
