"""``pagedllm bench multiturn``: multi-turn chats through a device pool too small for them.

N conversations x T turns share one system prompt; each conversation starts with a document of
its own (``doc_len`` tokens: a RAG context, a pasted file), and every turn appends the previous
answer and a new question to the conversation's history. Turns arrive in waves of ``concurrency``
conversations (turn 1 of conversations 0..C-1, then of C..2C-1, ..., then turn 2 of 0..C-1 ...),
so between two turns of one conversation all the others run, and a device pool smaller than
every history together must evict it. The same workload runs with the host tier off and on
(``cpu_cache_memory``); reported per run: TTFT p50/p99 (turns >= 2, where the history could be
reused, and all turns), output tokens/s over the whole run, prompt tokens computed and saved
(``num_cached_tokens``), tier hits and bytes moved.

Prompts are random token ids (``random.Random(seed)``) with ``ignore_eos`` and fixed answer
lengths, so the work is identical across runs and models.

Where the gain comes from: a host hit replaces the prefill of its tokens by a copy of their KV
(bytes per token = 2 x layers x KV heads x head dim x dtype size). Loading pays off only where
that copy is much cheaper than the prefill: at Qwen3-0.6B on an H200 one token's KV (112 KiB)
takes about as long to copy at ~50 GB/s as the token takes to prefill, so the tier saves
little; at Qwen3-8B (144 KiB per token, 13x the FLOPs) loading is ~10x cheaper. The history
that is not shared (``doc_len``, the answers and questions) is what the device pool loses: the
shared system prompt stays hot on the device either way.
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
    doc_len: int = 256

    def validate(self) -> None:
        """ValueError naming the field when a size is out of range."""
        for name in ("num_conversations", "num_turns", "answer_len", "concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("system_len", "question_len", "doc_len"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.system_len + self.doc_len + self.question_len < 1:
            raise ValueError("system_len + doc_len + question_len must be at least 1")
        if self.vocab <= 100:
            raise ValueError(f"vocab must be > 100, got {self.vocab}")


# help text of each MultiTurnSpec field (its CLI flag)
SPEC_HELP = {
    "num_conversations": "conversations in the workload",
    "num_turns": "turns per conversation",
    "system_len": "tokens of the system prompt every conversation shares",
    "question_len": "tokens of each new question",
    "answer_len": "tokens of each answer (ignore_eos)",
    "concurrency": "conversations whose turns arrive together (one wave)",
    "vocab": "prompt ids are drawn from [100, vocab)",
    "doc_len": "tokens of each conversation's own document, sent with its first turn",
}


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

    spec.validate()
    system = ids(spec.system_len)
    histories = [system + ids(spec.doc_len) for _ in range(spec.num_conversations)]
    questions = [
        [ids(spec.question_len) for _ in range(spec.num_turns)]
        for _ in range(spec.num_conversations)
    ]
    params = SamplingParams(temperature=0.0, max_tokens=spec.answer_len, ignore_eos=True)
    # warm-up outside the timing (kernel compilation, allocator, first-touch pages): a turn of
    # the workload's size on ids no conversation shares
    warm = [rng.randrange(100, spec.vocab) for _ in range(spec.system_len + spec.question_len)]
    _generate(engine, {f"warmup-{i}": [i + 1, *warm] for i in range(spec.concurrency)}, params)
    # and once more behind a cached prefix: the extend path (a long computed prefix, a short
    # new part) is what later turns run, and its kernels must not compile inside the timing
    more = [rng.randrange(100, spec.vocab) for _ in range(max(1, spec.question_len))]
    again = {f"warmup2-{i}": [i + 1, *warm, *more] for i in range(spec.concurrency)}
    _generate(engine, again, params)
    cache = getattr(engine.runner, "cache", None)  # one device: time the tier copies in it
    if cache is not None:
        cache.enable_copy_timing()
    before = engine.stats()
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
    copies = cache.copy_timings() if cache is not None else {}
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
        "prefill_computed_share": (prompt_tokens - cached_tokens) / max(prompt_tokens, 1),
        "host_tier_hit_blocks": stats.host_tier_hit_blocks - before.host_tier_hit_blocks,
        "tier_bytes_to_device": stats.tier_bytes_to_device - before.tier_bytes_to_device,
        "tier_bytes_to_host": stats.tier_bytes_to_host - before.tier_bytes_to_host,
        # every device <-> host copy batch (loads and swap-ins, write-backs and swap-outs),
        # timed on the copy stream: the achieved bandwidth and the seconds steps waited for it
        "copies": copies,
        "load_GBps": copies.get("to_device", {}).get("GBps", 0.0),
        "load_seconds": copies.get("to_device", {}).get("seconds", 0.0),
        "writeback_seconds": copies.get("to_host", {}).get("seconds", 0.0),
        "num_preemptions": stats.num_preemptions - before.num_preemptions,
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
    # bf16: a different batch shape may round differently, so report how many answers match
    matching = sum(off["outputs"][k] == on["outputs"][k] for k in off["outputs"])
    return {
        "runs": [{k: v for k, v in r.items() if k != "outputs"} for r in runs],
        "outputs_identical": same,
        "answers_matching": f"{matching}/{len(off['outputs'])}",
        "ttft_p50_speedup": off["ttft_p50_s"] / max(on["ttft_p50_s"], 1e-9),
        "ttft_p99_speedup": off["ttft_p99_s"] / max(on["ttft_p99_s"], 1e-9),
        "output_tok_s_ratio": on["output_tok_s"] / max(off["output_tok_s"], 1e-9),
    }


def format_table(result: dict) -> str:
    """A short text table of ``compare``'s result."""
    lines = [
        f"{'run':14s} {'TTFT p50':>10s} {'TTFT p99':>10s} {'out tok/s':>10s} "
        f"{'prefill saved':>14s} {'computed':>9s} {'host hits':>9s} {'loaded':>9s} "
        f"{'load GB/s':>9s} {'load s':>7s}"
    ]
    for r in result["runs"]:
        lines.append(
            f"{r['label']:14s} {r['ttft_p50_s'] * 1e3:8.1f}ms {r['ttft_p99_s'] * 1e3:8.1f}ms "
            f"{r['output_tok_s']:10.1f} {r['prefill_tokens_saved']:14d} "
            f"{r['prefill_tokens_computed']:9d} {r['host_tier_hit_blocks']:9d} "
            f"{r['tier_bytes_to_device'] / 1e9:7.2f}GB {r['load_GBps']:9.1f} "
            f"{r['load_seconds']:7.3f}"
        )
    lines.append(
        f"TTFT p50 speedup {result['ttft_p50_speedup']:.2f}x, p99 "
        f"{result['ttft_p99_speedup']:.2f}x, output tok/s x{result['output_tok_s_ratio']:.2f}; "
        f"outputs identical: {result['outputs_identical']} ({result['answers_matching']})"
    )
    return "\n".join(lines)
