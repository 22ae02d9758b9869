"""W-long through ``pagedllm bench throughput --workload long | long-128k`` (DESIGN.md section 4).

Long prompts of random ids, greedy, ``ignore_eos``. Two timed runs on fresh prompts (no
prefix-cache hits): 1 output token (the prefill time) and ``new`` output tokens; the decode time
per step is reported two ways: the difference of the two runs over ``new - 1`` steps (it
includes the first decode steps' set-up), and the median wall time between successive engine
steps once every prompt is prefilled (the steady state a long generation sees), next to the KV
bytes each decode step must read (the floor: every live K/V byte once per step).
"""

from __future__ import annotations

import statistics
import time

from pagedllm.benchmark.throughput import run_requests
from pagedllm.benchmark.workloads import LongSpec, long_prompts
from pagedllm.engine.llm_engine import LLMEngine


def prepare_long_args(args, spec: LongSpec) -> None:  # noqa: ANN001 - argparse.Namespace
    """Default the preset (dummy weights) and raise ``max_model_len`` to fit the workload."""
    given = args.model is not None or getattr(args, "model_positional", None) is not None
    if not given and args.preset is None:
        args.preset = spec.preset
        args.dummy = True
    need = spec.length + spec.new
    if args.max_model_len < need:
        args.max_model_len = need


def run_long_workload(engine: LLMEngine, spec: LongSpec) -> dict:
    """Prefill seconds, decode ms per step and the KV-read floor of one W-long variant."""
    need = spec.length + spec.new
    if engine.max_model_len < need:
        raise ValueError(
            f"the {spec.name} workload needs max_model_len >= {need}, but the model allows "
            f"{engine.max_model_len}: use --preset {spec.preset} (or a model with more positions)"
        )
    run_requests(engine, [[5] * 32], [2], 0.0, prefix="warm")
    timings = {}
    step_ends: list[float] = []

    def on_step() -> None:  # timestamps of steps taken after every prompt was prefilled
        if all(r.num_computed_tokens >= r.num_prompt_tokens for r in engine.scheduler.running):
            step_ends.append(time.perf_counter())

    for seed, new in ((1, 1), (2, spec.new)):
        start = time.perf_counter()
        produced = run_requests(
            engine,
            long_prompts(spec.num, spec.length, seed),
            [new] * spec.num,
            0.0,
            f"long{seed}",
            on_step=on_step if new > 1 else None,
        )
        timings[new] = time.perf_counter() - start
        if produced != spec.num * new:
            raise RuntimeError(f"expected {spec.num * new} output tokens, got {produced}")
    prefill_s, full_s = timings[1], timings[spec.new]
    kv = engine.runner.kv_spec
    bytes_per_token = kv.bytes_per_block / kv.block_size
    kv_read = spec.num * (spec.length + spec.new / 2) * bytes_per_token  # mean live KV per step
    return {
        "workload": spec.name,
        "num_prompts": spec.num,
        "prompt_len": spec.length,
        "output_len": spec.new,
        "kv_cache_dtype": str(kv.dtype).removeprefix("torch."),
        "prefill_s": prefill_s,
        "prefill_tok_s": spec.num * spec.length / prefill_s,
        "total_s": full_s,
        "decode_ms_per_step": (full_s - prefill_s) / (spec.new - 1) * 1e3,
        "decode_step_ms_p50": _steady_step_ms(step_ends),
        "kv_read_gb_per_step": kv_read / 1e9,
        "num_preemptions": engine.scheduler.num_preemptions,
    }


def _steady_step_ms(step_ends: list[float]) -> float | None:
    """Median gap between successive pure-decode steps, skipping the first few (graph replays
    of a new batch size, the prefill's last chunk draining through async scheduling)."""
    gaps = [b - a for a, b in zip(step_ends, step_ends[1:], strict=False)][4:]
    return statistics.median(gaps) * 1e3 if gaps else None
