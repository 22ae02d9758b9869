"""Where a W1 step's host time goes: cProfile over a W1 run on the GPU.

    PYTHONPATH=src python3 benchmarks/profile_w1.py [--num 256] [--block-size 16]

cProfile slows Python code (not GPU kernels), so read the shares, not the absolute times.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import torch

from pagedllm import LLM
from pagedllm.benchmark import workloads
from pagedllm.benchmark.throughput import run_workload


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--num", type=int, default=256)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--top", type=int, default=35)
    args = ap.parse_args()
    llm = LLM(
        workloads.preset_path("qwen3-0.6b"),
        load_format="dummy",
        dtype="bfloat16",
        block_size=args.block_size,
        max_num_batched_tokens=16384,
        max_model_len=4096,
    )
    load = workloads.w1().head(args.num)
    engine = llm.engine
    steps = {"n": 0, "sync_s": 0.0}
    execute = engine.runner.launch

    def timed_execute(*a, **k):  # counts the steps launched
        steps["n"] += 1
        return execute(*a, **k)

    engine.runner.launch = timed_execute
    prof = cProfile.Profile()
    prof.enable()
    t = time.perf_counter()
    res = run_workload(engine, load, temperature=0.6)
    torch.cuda.synchronize()
    prof.disable()
    print(res.as_dict(), "steps", steps["n"], "wall", time.perf_counter() - t)
    pstats.Stats(prof).sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
