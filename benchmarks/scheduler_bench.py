"""Scheduler + KV-manager CPU time per step with many requests in steady decode.

Not a test. Measures ``schedule()`` + ``update_from_output()`` (the model is a constant token,
outside the timed region), prefix caching on, and prints the median ms per step.

    PYTHONPATH=src python benchmarks/scheduler_bench.py [--requests 256] [--steps 1000]
"""

from __future__ import annotations

import argparse
import statistics
import time

from pagedllm.config import CacheConfig, SchedulerConfig
from pagedllm.core.request import Request
from pagedllm.core.scheduler import Scheduler
from pagedllm.sampling_params import SamplingParams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--block-size", type=int, default=16)
    args = parser.parse_args()

    max_len = args.prompt_len + args.steps + 64
    blocks_per_req = -(-max_len // args.block_size)
    sched = Scheduler(
        SchedulerConfig(
            max_num_seqs=args.requests, max_num_batched_tokens=8192, max_model_len=max_len
        ),
        CacheConfig(block_size=args.block_size, enable_prefix_caching=True),
        num_gpu_blocks=args.requests * blocks_per_req + 16,
    )
    params = SamplingParams(max_tokens=max_len, ignore_eos=True)
    for i in range(args.requests):
        prompt = [i % 1000 + 1] * 8 + list(range(args.prompt_len - 8))  # shared tail, own head
        sched.add_request(Request(f"r{i}", prompt, params, max_tokens=max_len))

    def step() -> float:
        t0 = time.perf_counter()
        out = sched.schedule()
        t1 = time.perf_counter()
        sampled = {s.request_id: [7] for s in out.scheduled if s.sample}  # the "model": untimed
        t2 = time.perf_counter()
        sched.update_from_output(out, sampled)
        t3 = time.perf_counter()
        return (t1 - t0) + (t3 - t2)

    while sched.num_waiting or any(r.num_tokens - r.num_computed_tokens > 1 for r in sched.running):
        step()  # prefill until every request decodes
    times = [step() for _ in range(args.steps)]
    assert sched.num_running == args.requests
    median_ms = statistics.median(times) * 1e3
    print(
        f"scheduler+kv step, {args.requests} decoding requests, block_size {args.block_size}, "
        f"prefix caching on: median {median_ms:.3f} ms/step "
        f"(p90 {statistics.quantiles(times, n=10)[-1] * 1e3:.3f} ms, {args.steps} steps)"
    )


if __name__ == "__main__":
    main()
