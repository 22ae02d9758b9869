"""Time one sampling step at W1's shape: the torch sampler vs the fused Gumbel-max kernel.

    PYTHONPATH=src python3 benchmarks/sampler_bench.py

256 rows x 151,936 logits (bf16, as the LM head returns them), temperature 0.6, no other
sampling options. CUDA events, median of 50 calls.
"""

from __future__ import annotations

import os
import statistics
import time

import torch

from pagedllm.layers.sampler import Sampler, SamplingBatch
from pagedllm.sampling_params import SamplingParams


def timed(fn, iters: int = 50) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main() -> None:
    rows, vocab = 256, 151936
    logits = torch.randn(rows, vocab, device="cuda", dtype=torch.bfloat16) * 3
    params = [SamplingParams(temperature=0.6)] * rows
    batch = SamplingBatch.build(params, [[]] * rows, [[]] * rows, [None] * rows, "cuda", vocab)
    sampler = Sampler()
    results = {}
    for name, disabled in (("torch", "sampler"), ("fused", "")):
        os.environ["PAGEDLLM_DISABLE_FUSED_KERNELS"] = disabled
        results[name] = timed(lambda: sampler(logits, batch))
    mb = rows * vocab * 2 / 1e6
    for name, ms in results.items():
        print(f"{name:<6} {ms:.4f} ms per step ({mb / ms / 1e3:.2f} TB/s of bf16 logits)")
    # host time per call (launches only, no sync) as the batch shrinks, as in W1's tail
    for name, disabled in (("torch", "sampler"), ("fused", "")):
        os.environ["PAGEDLLM_DISABLE_FUSED_KERNELS"] = disabled
        line = []
        for n in (256, 255, 200, 130, 64, 17, 1):
            sub = SamplingBatch.build(params[:n], [[]] * n, [[]] * n, [None] * n, "cuda", vocab)
            torch.cuda.synchronize()
            first = time.perf_counter()
            sampler(logits[:n], sub)
            first = time.perf_counter() - first
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(20):
                sampler(logits[:n], sub)
            host = (time.perf_counter() - start) / 20
            torch.cuda.synchronize()
            line.append(f"N={n}: first {first * 1e3:.2f} ms, then {host * 1e6:.0f} us")
        print(f"host {name}: " + "; ".join(line))
    os.environ.pop("PAGEDLLM_DISABLE_FUSED_KERNELS")


if __name__ == "__main__":
    main()
