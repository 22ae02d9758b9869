"""Run one throughput benchmark, or sweep block sizes and recommend the fastest."""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable

from pagedllm.benchmark import workloads
from pagedllm.benchmark.long_workload import prepare_long_args, run_long_workload
from pagedllm.benchmark.throughput import run_workload
from pagedllm.config import EngineConfig
from pagedllm.engine.llm_engine import LLMEngine
from pagedllm.entrypoints.startup import log_startup_summary


def _select_workload(
    args: argparse.Namespace, engine: LLMEngine
) -> tuple[workloads.Workload, float]:
    name = args.workload or ("w2" if args.preset == "qwen3-8b" else "w1" if args.preset else "w3")
    if name == "w1":
        load, temperature = workloads.w1(), 0.6
    elif name == "w2":
        load, temperature = workloads.w2(), 0.6
    else:
        conversations = workloads.w3_conversations()
        prompts = [
            list(engine.tokenizer.apply_chat_template(c, add_generation_prompt=True))
            for c in conversations
        ]
        load, temperature = workloads.Workload("W3", prompts, [64] * len(prompts)), 0.0
    if args.num_prompts:
        load = load.head(args.num_prompts)
    if args.temperature is not None:
        temperature = args.temperature
    return load, temperature


def run_throughput_or_sweep(
    args: argparse.Namespace, make_config: Callable[[argparse.Namespace], EngineConfig]
) -> dict:
    """Results for each block size asked for (one when no sweep), plus a recommendation."""
    long_spec = workloads.LONG_WORKLOADS.get(args.workload or "")
    if long_spec is not None:
        prepare_long_args(args, long_spec)
    if args.preset:
        args.model = workloads.preset_path(args.preset)
    if args.dummy:
        args.load_format = "dummy"
    sizes = (
        [int(s) for s in args.sweep_block_size.split(",")]
        if args.sweep_block_size
        else [args.block_size]
    )
    runs = []
    for size in sizes:
        args.block_size = size
        start = time.perf_counter()
        engine = LLMEngine.from_config(make_config(args))
        log_startup_summary(engine, time.perf_counter() - start)
        if long_spec is not None:
            result = run_long_workload(engine, long_spec)
            result["block_size"] = size
            runs.append(result)
            print(
                f"block_size={size:4d}  prefill {result['prefill_s']:.2f} s  decode "
                f"{result['decode_ms_per_step']:.2f} ms/step (steady "
                f"{result['decode_step_ms_p50'] or float('nan'):.2f}; KV read "
                f"{result['kv_read_gb_per_step']:.2f} GB/step)",
                flush=True,
            )
            del engine
            gc.collect()
            continue
        load, temperature = _select_workload(args, engine)
        result = run_workload(engine, load, temperature)
        runs.append(result.as_dict())
        print(
            f"block_size={size:4d}  {result.output_tok_s:9.1f} output tok/s  "
            f"({result.output_tokens} tokens in {result.elapsed_s:.2f} s, "
            f"{result.num_preemptions} preemptions)",
            flush=True,
        )
        del engine
        gc.collect()
    if long_spec is not None:
        best = min(runs, key=lambda r: r["decode_ms_per_step"])
    else:
        best = max(runs, key=lambda r: r["output_tok_s"])
    return {"runs": runs, "recommended_block_size": best["block_size"]}
