"""Host side of the hybrid KV throughput workload, on the CPU: what each step holds and costs.

The real ``Scheduler`` and ``KVCacheManager`` with the Gemma-3-1B layout (7 KV cache groups
with freeing, 1 without), a pool of the H200 run's size, and the runner's input layout
(``prepare_inputs`` on the CPU); the model is replaced by a fixed sampled token. Reports steps,
pure-decode steps, mean rows, prefill tokens per mixed step, preemptions, and host milliseconds
per step in ``schedule``, ``prepare_inputs`` and ``update_from_output``, freeing vs keep
(optionally under cProfile). This is how the 0.53x of the H200 throughput run was traced to
per-group host work (``benchmarks/RESULTS.md``).

    PYTHONPATH=src python3 benchmarks/hybrid_host_profile.py --requests 256 --prompt-len 8192 \\
        --output-len 512 [--profile free]
    PYTHONPATH=/tmp/before/src python3 benchmarks/hybrid_host_profile.py ...  # an older tree
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import random
import statistics
import time
from pathlib import Path

import torch

from pagedllm.benchmark.workloads import preset_path
from pagedllm.config import CacheConfig, SchedulerConfig
from pagedllm.core.kv_cache_spec import build_layout
from pagedllm.core.request import Request
from pagedllm.core.scheduler import Scheduler
from pagedllm.loader.attention_layout import layer_windows
from pagedllm.sampling_params import SamplingParams
from pagedllm.worker.input_batch import prepare_inputs

try:  # absent in trees before the snapshot change: run them too, for before/after numbers
    from pagedllm.worker.input_batch import GroupTableRows
except ImportError:  # pragma: no cover - old trees only
    GroupTableRows = None

# pool blocks of the H200 run (40 GiB, bf16): freeing 64 KiB blocks, keep 416 KiB blocks
POOL_BLOCKS = {"free": 655_359, "keep": 100_824}


def run(variant: str, args) -> dict:
    """One workload through the scheduler and input layout; per-step statistics."""
    cfg = json.loads(Path(preset_path(args.preset)).read_text())
    layout = build_layout(layer_windows(cfg), disable_hybrid=variant == "keep")
    sched = Scheduler(
        SchedulerConfig(max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.chunk,
                        max_model_len=args.prompt_len + args.output_len + 16),
        CacheConfig(block_size=args.block_size, enable_prefix_caching=False),
        POOL_BLOCKS[variant] if args.pool_blocks is None else args.pool_blocks,
        0,
        layout.windows,
    )  # fmt: skip
    rng = random.Random(0)
    params = SamplingParams(max_tokens=args.output_len, ignore_eos=True)
    for i in range(args.requests):
        prompt = [rng.randrange(10000) for _ in range(args.prompt_len)]
        sched.add_request(Request(f"r{i}", prompt, params, max_tokens=args.output_len))
    device = torch.device("cpu")
    layout_args = () if GroupTableRows is None else (GroupTableRows(),)
    times = {"schedule": [], "prepare": [], "update": []}
    plans = []
    profiler = cProfile.Profile() if args.profile == variant else None
    if profiler:
        profiler.enable()
    while sched.has_unfinished_requests():
        t0 = time.perf_counter()
        out = sched.schedule()
        t1 = time.perf_counter()
        prepare_inputs(out, args.block_size, device, *layout_args)
        t2 = time.perf_counter()
        sched.update_from_output(out, {s.request_id: [7] for s in out.scheduled if s.sample})
        t3 = time.perf_counter()
        for key, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            times[key].append(dt)
        plans.append((len(out.scheduled), out.num_batched_tokens - out.num_decodes))
    if profiler:
        profiler.disable()
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(20)
    mixed = [p for _, p in plans if p]
    decode = [i for i, (_, p) in enumerate(plans) if not p]
    return {
        "variant": variant,
        "groups": layout.num_groups,
        "steps": len(plans),
        "pure_decode_steps": len(decode),
        "mean_rows": round(sum(r for r, _ in plans) / len(plans), 1),
        "prefill_tokens_per_mixed_step": round(sum(mixed) / max(len(mixed), 1)),
        "preemptions": sched.num_preemptions,
        **{f"{k}_ms_mean": round(1e3 * sum(v) / len(v), 2) for k, v in times.items()},
        **{
            f"{k}_ms_decode_median": round(1e3 * statistics.median(v[i] for i in decode), 2)
            for k, v in times.items()
            if decode
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="gemma-3-1b")
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--prompt-len", type=int, default=8192)
    parser.add_argument("--output-len", type=int, default=512)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--chunk", type=int, default=8192, help="max_num_batched_tokens")
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--pool-blocks", type=int, default=None, help="default: the H200 run's")
    parser.add_argument("--variants", nargs="+", default=["free", "keep"], choices=POOL_BLOCKS)
    parser.add_argument("--profile", choices=POOL_BLOCKS, default=None, help="cProfile one")
    parser.add_argument("--out", default=None, help="JSON file for the results")
    args = parser.parse_args()
    results = [run(v, args) for v in args.variants]
    for r in results:
        print(json.dumps(r))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
