"""Gemma 2, Gemma 3, Mistral and Qwen2 with sliding windows: greedy equal to transformers.

Tiny random models written by transformers (``hybrid_models.py``), float32, prompts 4-10x the
window (8), the KV manager freeing pages outside the window: at block sizes 1, 16 and 128,
with prefix-cache hits, under recompute and swap preemption, and with ``n = 3``.
"""

from __future__ import annotations

import pytest
import torch
from hybrid_models import ARCHS, hf_greedy, prompts, save_tiny_model

from e2e_utils import assert_all_blocks_free
from pagedllm import LLM, SamplingParams

MAX_NEW = 10
# pools of 4-token blocks that hold one or two of the requests at once (more groups need more)
PRESSURE_BLOCKS = {"gemma2": 40, "gemma3": 80, "mistral": 24, "qwen2": 60}
LENS = [40, 75, 33, 80]  # 4-10x the window of 8


@pytest.fixture(scope="module", params=list(ARCHS))
def tiny(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    hf = save_tiny_model(request.param, directory)
    ps = prompts(LENS)
    return request.param, directory, ps, [hf_greedy(hf, p, MAX_NEW) for p in ps]


def _greedy(n: int = 1) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=MAX_NEW, ignore_eos=True, n=n)


def _check(llm, ps, expected, n: int = 1) -> None:
    outs = llm.generate(ps, _greedy(n), use_tqdm=False)
    for prompt, want, out in zip(ps, expected, outs, strict=True):
        assert len(out.outputs) == n
        for completion in out.outputs:
            assert completion.token_ids == want, f"prompt of {len(prompt)} tokens diverged"
    assert_all_blocks_free(llm)


@pytest.mark.parametrize("block_size", [1, 16, 128])
def test_greedy_matches_transformers_with_prefix_hits(tiny, block_size):
    name, directory, ps, expected = tiny
    llm = LLM(
        model=str(directory),
        dtype="float32",
        block_size=block_size,
        num_gpu_blocks=4000 // block_size + 8,
        max_num_batched_tokens=48,
    )
    kv = llm.engine.scheduler.kv_manager
    if name in ("gemma2", "gemma3", "qwen2"):
        assert kv.num_groups > 1, "a full + window model gets several KV cache groups"
    _check(llm, ps, expected)
    # the same prompts again: prefix-cache hits (window groups need only their window)
    before = kv.prefix_cache_hits
    _check(llm, ps, expected)
    if block_size < 128:
        assert kv.prefix_cache_hits > before


@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_greedy_matches_transformers_under_preemption_and_n3(tiny, mode):
    name, directory, ps, expected = tiny
    llm = LLM(
        model=str(directory),
        dtype="float32",
        block_size=4,
        num_gpu_blocks=PRESSURE_BLOCKS[name],
        max_num_batched_tokens=32,
        preemption_mode=mode,
        swap_space=1 << 20,
    )
    _check(llm, ps, expected, n=3)
    assert llm.engine.scheduler.num_preemptions > 0, "the small pool was meant to preempt"
    if mode == "swap":
        assert llm.engine.scheduler.num_swap_outs > 0


def test_long_prompt_fits_only_through_window_freeing(tmp_path):
    """A 4,000-token prompt + 200 new tokens on a window-256 model in a ~1,000-token pool:
    equal to transformers with freeing; refused up front ("needs N blocks") without."""
    hf = save_tiny_model(
        "mistral",
        tmp_path,
        sliding_window=256,
        max_position_embeddings=4400,
        hidden_size=32,
        intermediate_size=64,
        head_dim=8,
        num_hidden_layers=2,
    )
    (prompt,) = prompts([4000], seed=7)
    want = hf_greedy(hf, prompt, 200)
    options = dict(
        model=str(tmp_path),
        dtype="float32",
        block_size=16,
        num_gpu_blocks=64,
        max_model_len=4400,
        max_num_batched_tokens=512,
    )
    params = SamplingParams(temperature=0.0, max_tokens=200, ignore_eos=True)
    llm = LLM(**options)
    assert llm.engine.scheduler.kv_manager.num_blocks * 16 <= 1024
    (out,) = llm.generate([prompt], params, use_tqdm=False)
    assert out.outputs[0].token_ids == want
    assert_all_blocks_free(llm)
    full = LLM(**options, disable_hybrid_kv_cache=True)
    with pytest.raises(ValueError, match=r"needs up to 263 KV blocks"):
        full.generate([prompt], params, use_tqdm=False)


def test_freed_pages_poisoned_with_nan_leave_outputs_exact(tiny):
    """Before every step, every free page and the null block are filled with NaN: a kernel
    that read a freed or null page would turn the logits into NaN or change the tokens."""
    name, directory, ps, expected = tiny
    llm = LLM(
        model=str(directory),
        dtype="float32",
        block_size=4,
        num_gpu_blocks=120,
        max_num_batched_tokens=24,
        enable_prefix_caching=False,
    )
    engine = llm.engine
    kv, runner = engine.scheduler.kv_manager, engine.runner
    launch = runner.launch
    poisoned = []

    def poisoning_launch(output, *args, **kwargs):
        free = list(kv.pool.free_queue_ids())
        if kv.pool.null_block is not None:
            free.append(kv.pool.null_block.block_id)
        index = torch.tensor(free, dtype=torch.long)
        for pages in runner.cache.page_tensors:
            pages[:, index] = float("nan")
        poisoned.append(len(free))
        return launch(output, *args, **kwargs)

    runner.launch = poisoning_launch
    _check(llm, ps, expected)
    assert max(poisoned) > 0


def test_multi_step_and_async_rounds_keep_window_slots_right(tiny):
    """Multi-step rounds advance every group's slots on the device from its own table, and
    async continuations allocate lookahead while the window frees pages behind it."""
    name, directory, ps, expected = tiny
    llm = LLM(
        model=str(directory),
        dtype="float32",
        block_size=4,
        num_gpu_blocks=200,
        max_num_batched_tokens=256,
        num_scheduler_steps=4,
        async_scheduling=True,
    )
    _check(llm, ps, expected)


def test_tensor_parallel_gemma2_with_window_freeing(tmp_path):
    """Two ranks (one KV head each) with per-group tables: equal to transformers."""
    hf = save_tiny_model("gemma2", tmp_path)
    ps = prompts(LENS[:2])
    want = [hf_greedy(hf, p, MAX_NEW) for p in ps]
    with LLM(
        model=str(tmp_path),
        dtype="float32",
        device="cpu",
        block_size=4,
        num_gpu_blocks=200,
        max_num_batched_tokens=32,
        tensor_parallel_size=2,
    ) as llm:
        assert llm.engine.scheduler.kv_manager.num_groups == 2
        _check(llm, ps, want)
