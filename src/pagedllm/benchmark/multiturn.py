"""``pagedllm bench multiturn``: multi-turn chats through a device pool too small for them.

N conversations x T turns share one system prompt; every turn appends the previous answer and
a new question to the conversation's history. Turns arrive in waves of ``concurrency``
conversations (turn 1 of conversations 0..C-1, then of C..2C-1, ..., then turn 2 of 0..C-1 ...),
so between two turns of one conversation all the others run, and a device pool smaller than
every history together must evict it. The same workload runs with the host tier off and on
(``cpu_cache_memory``); reported per run: TTFT p50/p99 (turns >= 2, where the history could be
reused, and all turns), output tokens/s over the whole run, prompt tokens computed and saved
(``num_cached_tokens``), tier hits and bytes moved.

Prompts are random token ids (``random.Random(seed)``) with ``ignore_eos`` and fixed answer
lengths, so the work is identical across runs and models.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import asdict, dataclass

from pagedllm.engine.llm_engine import LLMEngine
from pagedllm.sampling_params import SamplingParams


@dataclass(slots=True)
class MultiTurnSpec:
    """The workload's shape (see the module docstring)."""

    num_conversations: int = 16
    num_turns: int = 4
    system_len: int = 256
    question_len: int = 64
    answer_len: int = 32
    concurrency: int = 4
    seed: int = 0
    vocab: int = 10000  # prompt ids are drawn from [100, vocab)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_multiturn(engine: LLMEngine, spec: MultiTurnSpec, label: str) -> dict:
    """Run the workload once on ``engine``; returns the measured figures."""
    rng = random.Random(spec.seed)

    def ids(n: int) -> list[int]:
        return [rng.randrange(100, spec.vocab) for _ in range(n)]

    system = ids(spec.system_len)
    histories = [list(system) for _ in range(spec.num_conversations)]
    questions = [
        [ids(spec.question_len) for _ in range(spec.num_turns)]
        for _ in range(spec.num_conversations)
    ]
    params = SamplingParams(temperature=0.0, max_tokens=spec.answer_len, ignore_eos=True)
    # warm-up outside the timing (kernel compilation, allocator, first-touch pages): a turn of
    # the workload's size on ids no conversation shares
    warm = [rng.randrange(100, spec.vocab) for _ in range(spec.system_len + spec.question_len)]
    _generate(engine, {f"warmup-{i}": [i + 1, *warm] for i in range(spec.concurrency)}, params)
    ttft_all, ttft_later = [], []
    prompt_tokens = cached_tokens = output_tokens = 0
    outputs: dict[str, list[int]] = {}
    start = time.perf_counter()
    for turn in range(spec.num_turns):
        for first in range(0, spec.num_conversations, spec.concurrency):
            wave = range(first, min(first + spec.concurrency, spec.num_conversations))
            prompts = {f"c{c}-t{turn}": histories[c] + questions[c][turn] for c in wave}
            for c, (rid, out) in zip(wave, _generate(engine, prompts, params).items(), strict=True):
                answer = out.outputs[0].token_ids
                outputs[rid] = answer
                histories[c] = prompts[rid] + list(answer)
                ttft = out.metrics.time_to_first_token
                ttft_all.append(ttft)
                if turn > 0:
                    ttft_later.append(ttft)
                prompt_tokens += len(out.prompt_token_ids)
                cached_tokens += out.num_cached_tokens
                output_tokens += len(answer)
    elapsed = time.perf_counter() - start
    stats = engine.stats()
    return {
        "label": label,
        "spec": asdict(spec),
        "cpu_cache_memory": engine.config.cache.cpu_cache_memory,
        "num_gpu_blocks": engine.scheduler.kv_manager.num_blocks,
        "ttft_p50_s": _percentile(ttft_later, 0.5),
        "ttft_p99_s": _percentile(ttft_later, 0.99),
        "ttft_p50_all_s": _percentile(ttft_all, 0.5),
        "ttft_mean_s": statistics.fmean(ttft_all),
        "elapsed_s": elapsed,
        "output_tok_s": output_tokens / elapsed,
        "prompt_tokens": prompt_tokens,
        "prefill_tokens_saved": cached_tokens,
        "prefill_tokens_computed": prompt_tokens - cached_tokens,
        "host_tier_hit_blocks": stats.host_tier_hit_blocks,
        "tier_bytes_to_device": stats.tier_bytes_to_device,
        "tier_bytes_to_host": stats.tier_bytes_to_host,
        "num_preemptions": stats.num_preemptions,
        "outputs": outputs,
    }


def _generate(engine: LLMEngine, prompts: dict[str, list[int]], params: SamplingParams) -> dict:
    """Run ``prompts`` (arriving together) to completion; their final outputs by id."""
    for rid, prompt in prompts.items():
        engine.add_request(rid, None, params, prompt_token_ids=prompt, stream=False)
    done = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out
    return {rid: done[rid] for rid in prompts}


def compare(make_engine, spec: MultiTurnSpec, host_bytes: int) -> dict:  # noqa: ANN001
    """The workload with the host tier off, then on (``host_bytes``); same outputs asserted
    equal by the caller's choice (``outputs`` of both runs are returned)."""
    runs = []
    for label, cpu in (("tiers off", 0), ("host tier on", host_bytes)):
        engine = make_engine(cpu)
        runs.append(run_multiturn(engine, spec, label))
        engine.shutdown()
        del engine
    off, on = runs
    same = off["outputs"] == on["outputs"]
    return {
        "runs": [{k: v for k, v in r.items() if k != "outputs"} for r in runs],
        "outputs_identical": same,
        "ttft_p50_speedup": off["ttft_p50_s"] / max(on["ttft_p50_s"], 1e-9),
    }


def format_table(result: dict) -> str:
    """A short text table of ``compare``'s result."""
    lines = [
        f"{'run':14s} {'TTFT p50':>10s} {'TTFT p99':>10s} {'out tok/s':>10s} "
        f"{'prefill saved':>14s} {'computed':>9s} {'host hits':>9s}"
    ]
    for r in result["runs"]:
        lines.append(
            f"{r['label']:14s} {r['ttft_p50_s'] * 1e3:8.1f}ms {r['ttft_p99_s'] * 1e3:8.1f}ms "
            f"{r['output_tok_s']:10.1f} {r['prefill_tokens_saved']:14d} "
            f"{r['prefill_tokens_computed']:9d} {r['host_tier_hit_blocks']:9d}"
        )
    lines.append(
        f"TTFT p50 speedup {result['ttft_p50_speedup']:.2f}x; "
        f"outputs identical: {result['outputs_identical']}"
    )
    return "\n".join(lines)
