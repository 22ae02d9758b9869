"""Memory-waste study: how much of the reserved KV memory holds real token states?

Drives the REAL core ``Scheduler`` + ``KVCacheManager`` with a fake runner (no model: every
scheduled request that reaches the end of its tokens gets one token per step) on a synthetic
ShareGPT-like workload, and measures at every step

    utilization = token states stored / KV memory reserved by running requests

for pagedllm at several block sizes, and for contiguous baselines simulated with the same
memory and the same FCFS admission (a request is admitted only if its whole reservation fits):

* ``reserve max_model_len``   - one slot per possible position (Orca "Max"-like)

plus pagedllm at block size 16 with an fp8 KV cache: the same bytes hold twice the token slots.
* ``reserve pow2(p+o)``       - the next power of two >= prompt + output (Orca "Pow2"-like)
* ``reserve prompt+max_tokens`` - the exact final length, known in advance (Orca "Oracle"-like)

The baselines are given no external fragmentation (a perfect compacting allocator), so their
figures are upper bounds; the PagedAttention paper measured 20.4-38.2 % for real systems.

Workload (``--num-requests`` requests, all queued at t=0, seed 0): prompt and output lengths
are log-normal with sigma 1.0 (prompt) and 0.8 (output), their means set to ShareGPT's
161.3 input / 338.0 output tokens (vLLM paper); prompt capped at max_model_len - 1, output
at max_model_len - prompt, both >= 1. Memory: ``--capacity-tokens`` KV token slots (default
32768, about an A100-40GB serving a 13B model), so paged gets capacity // block_size blocks.

    PYTHONPATH=src python benchmarks/memory.py [--block-sizes 8,16,32,64,128,256] \
        [--out benchmarks/memory.json] [--plot benchmarks/plots/memory_waste.png]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
from collections.abc import Callable
from pathlib import Path

from pagedllm.config import CacheConfig, SchedulerConfig
from pagedllm.core.request import Request
from pagedllm.core.scheduler import Scheduler
from pagedllm.sampling_params import SamplingParams

MEAN_PROMPT, MEAN_OUTPUT = 161.3, 338.0  # ShareGPT, as reported in the vLLM paper
SIGMA_PROMPT, SIGMA_OUTPUT = 1.0, 0.8


def sharegpt_like(n: int, max_model_len: int, seed: int = 0) -> list[tuple[int, int]]:
    """(prompt_len, output_len) pairs, log-normal with ShareGPT's means, capped."""
    rng = random.Random(seed)

    def draw(mean: float, sigma: float) -> int:
        return max(1, round(rng.lognormvariate(math.log(mean) - sigma**2 / 2, sigma)))

    out = []
    for _ in range(n):
        prompt = min(draw(MEAN_PROMPT, SIGMA_PROMPT), max_model_len - 1)
        output = min(draw(MEAN_OUTPUT, SIGMA_OUTPUT), max_model_len - prompt)
        out.append((prompt, output))
    return out


def _summary(
    util: list[float], real: int, reserved: int, batch: list[int], saturated: list[bool], **extra
) -> dict:
    """Per-step series -> figures; 'saturated' steps are those with requests still queued
    (memory, not the workload, limits the batch then)."""
    sat_batch = [b for b, s in zip(batch, saturated, strict=True) if s] or [0]
    sat_util = [u for u, s in zip(util, saturated, strict=True) if s] or [0.0]
    return {
        "utilization_mean": statistics.fmean(util),
        "utilization_p10": sorted(util)[len(util) // 10],
        "utilization_weighted": real / reserved,  # sum over steps of stored / reserved
        "utilization_saturated": statistics.fmean(sat_util),
        "max_batch": max(batch),
        "mean_batch_saturated": statistics.fmean(sat_batch),
        "steps": len(util),
        **extra,
    }


def simulate_paged(
    lengths: list[tuple[int, int]], capacity: int, block_size: int, max_model_len: int
) -> dict:
    """Run the real scheduler (recompute preemption, no prefix caching) with a fake runner."""
    sched = Scheduler(
        SchedulerConfig(
            max_num_seqs=1024, max_num_batched_tokens=16384, max_model_len=max_model_len
        ),
        CacheConfig(block_size=block_size, enable_prefix_caching=False),
        num_gpu_blocks=capacity // block_size,
    )
    for i, (p, o) in enumerate(lengths):
        params = SamplingParams(max_tokens=o, ignore_eos=True)
        sched.add_request(
            Request(f"r{i}", [1 + (i + k) % 30000 for k in range(p)], params, max_tokens=o)
        )
    kv = sched.kv_manager
    util, batch, sat, real_sum, reserved_sum = [], [], [], 0, 0
    while sched.has_unfinished_requests():
        out = sched.schedule()
        # token states held after this step: computed so far + computed in this step
        stored = sum(r.num_computed_tokens for r in sched.running) + out.num_batched_tokens
        reserved = (kv.num_blocks - kv.num_free_blocks) * block_size
        if reserved:
            util.append(stored / reserved)
            batch.append(sched.num_running)
            sat.append(sched.num_waiting > 0)
            real_sum += stored
            reserved_sum += reserved
        sched.update_from_output(out, {s.request_id: [7] for s in out.scheduled if s.sample})
    assert kv.num_free_blocks == kv.num_blocks
    return _summary(util, real_sum, reserved_sum, batch, sat, preemptions=sched.num_preemptions)


def simulate_contiguous(
    lengths: list[tuple[int, int]], capacity: int, reserve: Callable[[int, int], int]
) -> dict:
    """Contiguous per-request reservations, FCFS, admitted only when the reservation fits.

    A request's prompt is computed in its first step, then one token per step.
    """
    waiting = list(lengths)
    waiting.reverse()  # pop() from the end = FCFS
    running: list[list[int]] = []  # [stored tokens, final length, reservation]
    used = 0
    util, batch, sat, real_sum, reserved_sum = [], [], [], 0, 0
    while waiting or running:
        for r in running:
            r[0] += 1
        while waiting and used + reserve(*waiting[-1]) <= capacity and len(running) < 1024:
            p, o = waiting.pop()
            running.append([p + 1, p + o, reserve(p, o)])  # prompt + its first token's KV
            used += running[-1][2]
        if not running:
            raise ValueError("a request does not fit the memory at all")
        stored = sum(min(r[0], r[1]) for r in running)
        util.append(stored / used)
        batch.append(len(running))
        sat.append(bool(waiting))
        real_sum += stored
        reserved_sum += used
        done = [r for r in running if r[0] >= r[1]]
        for r in done:
            used -= r[2]
        running = [r for r in running if r[0] < r[1]]
    return _summary(util, real_sum, reserved_sum, batch, sat, preemptions=0)


def run_study(block_sizes: list[int], capacity: int, num_requests: int, max_model_len: int) -> dict:
    lengths = sharegpt_like(num_requests, max_model_len)
    results: dict[str, dict] = {}
    for bs in block_sizes:
        results[f"pagedllm bs={bs}"] = simulate_paged(lengths, capacity, bs, max_model_len)
    # kv_cache_dtype="fp8": a page costs half the bytes of bf16, so the same memory holds twice
    # the token slots (KVCacheSpec.bytes_per_block; checked end to end in tests/e2e/test_fp8_kv.py)
    results["pagedllm bs=16 fp8 KV"] = simulate_paged(lengths, 2 * capacity, 16, max_model_len)
    results["reserve prompt+max_tokens"] = simulate_contiguous(
        lengths, capacity, lambda p, o: p + o
    )
    results["reserve pow2(p+o)"] = simulate_contiguous(
        lengths, capacity, lambda p, o: min(1 << (p + o - 1).bit_length(), max_model_len)
    )
    results["reserve max_model_len"] = simulate_contiguous(
        lengths, capacity, lambda p, o: max_model_len
    )
    return {
        "workload": {
            "num_requests": num_requests,
            "prompt": f"lognormal mean {MEAN_PROMPT} sigma {SIGMA_PROMPT}",
            "output": f"lognormal mean {MEAN_OUTPUT} sigma {SIGMA_OUTPUT}",
            "max_model_len": max_model_len,
            "mean_prompt": statistics.fmean(p for p, _ in lengths),
            "mean_output": statistics.fmean(o for _, o in lengths),
            "capacity_tokens": capacity,
            "seed": 0,
        },
        "results": results,
    }


def print_table(study: dict) -> None:
    w = study["workload"]
    print(
        f"{w['num_requests']} requests, mean prompt {w['mean_prompt']:.1f} / output "
        f"{w['mean_output']:.1f} tokens, max_model_len {w['max_model_len']}, "
        f"KV memory {w['capacity_tokens']} token slots"
    )
    print(
        f"{'policy':26s} {'util mean':>9s} {'p10':>6s} {'weighted':>8s} {'saturated':>9s} "
        f"{'max batch':>9s} {'sat. batch':>10s} {'steps':>6s} {'preempt':>7s}"
    )
    for name, r in study["results"].items():
        print(
            f"{name:26s} {100 * r['utilization_mean']:8.1f}% {100 * r['utilization_p10']:5.1f}% "
            f"{100 * r['utilization_weighted']:7.1f}% {100 * r['utilization_saturated']:8.1f}% "
            f"{r['max_batch']:9d} {r['mean_batch_saturated']:10.1f} {r['steps']:6d} "
            f"{r['preemptions']:7d}"
        )


def plot(study: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(study["results"])
    res = study["results"]
    colors = ["tab:blue" if n.startswith("pagedllm") else "tab:gray" for n in names]
    short = {
        "reserve prompt+max_tokens": "contig.\np+max_tok",
        "reserve pow2(p+o)": "contig.\npow2",
        "reserve max_model_len": "contig.\nmax_len",
    }
    labels = [short.get(n, n.replace("pagedllm ", "paged\n")) for n in names]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    util = [100 * res[n]["utilization_mean"] for n in names]
    ax1.bar(range(len(names)), util, color=colors)
    ax1.axhspan(
        20.4,
        38.2,
        color="tab:red",
        alpha=0.12,
        zorder=0,
        label="paper: existing systems 20.4-38.2%",
    )
    ax1.axhline(96, color="tab:green", ls="--", lw=1, label="target 96%")
    for i, u in enumerate(util):
        ax1.text(i, u + 1, f"{u:.1f}", ha="center", fontsize=8)
    ax1.set_ylabel("reserved KV memory holding token states (%, mean over steps)")
    ax1.set_ylim(0, 105)
    ax1.set_xticks(range(len(names)), labels, fontsize=8)
    ax1.legend(loc="lower left", fontsize=8)
    ax1.set_title("KV memory utilization")
    batch = [res[n]["mean_batch_saturated"] for n in names]
    peak = [res[n]["max_batch"] for n in names]
    ax2.bar(range(len(names)), peak, color=colors, alpha=0.3, label="peak")
    ax2.bar(range(len(names)), batch, color=colors, label="mean while requests queue")
    for i, (b, m) in enumerate(zip(batch, peak, strict=True)):
        ax2.text(i, b + 1, f"{b:.0f}", ha="center", fontsize=8)
        if m > b + 6:
            ax2.text(i, m + 1, str(m), ha="center", fontsize=7, color="dimgray")
    ax2.legend(fontsize=8)
    ax2.set_ylabel("concurrent running requests")
    ax2.set_xticks(range(len(names)), labels, fontsize=8)
    ax2.set_title("Largest batch in the same memory")
    w = study["workload"]
    fig.suptitle(
        f"ShareGPT-like workload ({w['num_requests']} requests, mean {w['mean_prompt']:.0f} in / "
        f"{w['mean_output']:.0f} out), {w['capacity_tokens']} KV token slots, "
        f"max_model_len {w['max_model_len']}"
    )
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--block-sizes", default="8,16,32,64,128,256")
    parser.add_argument("--capacity-tokens", type=int, default=32768)
    parser.add_argument("--num-requests", type=int, default=1000)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--out", default="benchmarks/memory.json")
    parser.add_argument("--plot", default="benchmarks/plots/memory_waste.png")
    args = parser.parse_args()
    sizes = [int(s) for s in args.block_sizes.split(",")]
    study = run_study(sizes, args.capacity_tokens, args.num_requests, args.max_model_len)
    print_table(study)
    Path(args.out).write_text(json.dumps(study, indent=2) + "\n")
    if args.plot:
        plot(study, args.plot)
        print(f"wrote {args.out} and {args.plot}")


if __name__ == "__main__":
    main()
