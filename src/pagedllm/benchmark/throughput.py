"""Offline throughput: run a fixed workload through one engine and time it.

Reported: output tokens/s over the wall time of the whole batch, after one warm-up request
(which also triggers any lazy compilation / CUDA graph capture).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from pagedllm.benchmark.workloads import Workload
from pagedllm.engine.llm_engine import LLMEngine
from pagedllm.progress import progress_bar
from pagedllm.sampling_params import SamplingParams


@dataclass(slots=True)
class ThroughputResult:
    workload: str
    num_requests: int
    prompt_tokens: int
    output_tokens: int
    elapsed_s: float
    output_tok_s: float
    total_tok_s: float
    num_preemptions: int
    block_size: int

    def as_dict(self) -> dict:
        return asdict(self)


def run_workload(
    engine: LLMEngine, workload: Workload, temperature: float = 0.6, warmup: bool = True
) -> ThroughputResult:
    """Generate every request of ``workload`` (ignore_eos, fixed lengths) and time it."""
    if warmup:
        run_requests(engine, [workload.prompts[0][:16]], [4], temperature, prefix="warm")
    preempt_before = engine.scheduler.num_preemptions
    start = time.perf_counter()
    produced = run_requests(
        engine, workload.prompts, workload.output_lens, temperature, prefix="req"
    )
    elapsed = time.perf_counter() - start
    return ThroughputResult(
        workload=workload.name,
        num_requests=len(workload.prompts),
        prompt_tokens=workload.num_prompt_tokens,
        output_tokens=produced,
        elapsed_s=elapsed,
        output_tok_s=produced / elapsed,
        total_tok_s=(produced + workload.num_prompt_tokens) / elapsed,
        num_preemptions=engine.scheduler.num_preemptions - preempt_before,
        block_size=engine.config.cache.block_size,
    )


def run_requests(
    engine: LLMEngine,
    prompts: list[list[int]],
    output_lens: list[int],
    temperature: float,
    prefix: str,
    on_step: Callable[[], None] | None = None,
) -> int:
    """Queue every prompt (ignore_eos, exactly its output length), step until all finish;
    returns the output tokens produced. Request ids are ``{prefix}-{i}``; ``on_step`` is called
    after every engine step (for per-step timing)."""
    for i, (prompt, out_len) in enumerate(zip(prompts, output_lens, strict=True)):
        params = SamplingParams(temperature=temperature, max_tokens=out_len, ignore_eos=True)
        engine.add_request(f"{prefix}-{i}", None, params, prompt_token_ids=prompt, stream=False)
    produced = 0
    bar = progress_bar(len(prompts), prefix, "req", enabled=None if len(prompts) > 1 else False)
    try:
        while engine.has_unfinished_requests():
            for output in engine.step():
                if output.finished:
                    produced += len(output.outputs[0].token_ids)
                    bar.update(1)
                    bar.set_postfix(output_tokens=produced, refresh=False)
            if on_step is not None:
                on_step()
    finally:
        bar.close()
    return produced
