"""Where a workload's GPU time goes: a torch-profiler window over prefill steps and over decode steps.

    PYTHONPATH=src python3 benchmarks/profile_steps.py --preset gemma-3-1b --prompt-len 8192 \
        --num-requests 64 --output-len 64 --out $OUT

Adds ``--num-requests`` random-id prompts (dummy weights, ignore_eos), runs ``--skip-prefill``
steps, profiles ``--window`` engine steps while prompts are still being prefilled, runs on until
every prompt is prefilled, then profiles ``--window`` decode steps. For each window: wall ms per
step, device kernel ms per step (busy fraction) and the kernels that take the time, so a slow
workload can be compared with its floor (FLOPs and bytes per step) kernel by kernel.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from pagedllm import LLM, SamplingParams  # noqa: E402
from pagedllm.benchmark.workloads import preset_path  # noqa: E402


def kernel_totals(prof, n: int) -> tuple[float, list]:
    """Device microseconds in all kernels of a profiler window, and the ``n`` that took most."""
    per_kernel: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    busy = 0.0
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            us = ev.device_time if hasattr(ev, "device_time") else ev.cuda_time
            busy += us
            per_kernel[ev.name[:90]][0] += us
            per_kernel[ev.name[:90]][1] += 1
    return busy, sorted(per_kernel.items(), key=lambda kv: -kv[1][0])[:n]


def summarize(prof, wall_s: float, steps: int, top: int = 25) -> dict:
    """Device kernel time of a profiler window: busy fraction and the top kernels."""
    busy, ranked = kernel_totals(prof, top)
    return {
        "window_steps": steps,
        "wall_ms": round(wall_s * 1e3, 2),
        "wall_ms_per_step": round(wall_s * 1e3 / max(steps, 1), 3),
        "gpu_kernel_ms": round(busy / 1e3, 2),
        "busy_fraction": round(busy / 1e3 / max(wall_s * 1e3, 1e-9), 3),
        "top_kernels_ms": [(k, round(v[0] / 1e3, 3), v[1]) for k, v in ranked],
    }


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def profile_window(engine, steps: int) -> dict:
    """Profile ``steps`` engine steps (synchronized before and after)."""
    _sync()
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        t = time.perf_counter()
        for _ in range(steps):
            engine.step()
        _sync()
        wall = time.perf_counter() - t
    return summarize(prof, wall, steps)


def _prefilling(engine) -> int:
    sched = engine.scheduler
    waiting = len(getattr(sched, "waiting", ()))
    return waiting + sum(1 for r in sched.running if r.num_computed_tokens < r.num_prompt_tokens)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="gemma-3-1b")
    ap.add_argument("--num-requests", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=8192)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=8192, help="max_num_batched_tokens")
    ap.add_argument("--skip-prefill", type=int, default=3, help="steps before the prefill window")
    ap.add_argument("--window", type=int, default=8)
    ap.add_argument("--kv-gib", type=float, default=20.0)
    ap.add_argument("--eager", action="store_true", help="no CUDA graphs")
    ap.add_argument("--disable-hybrid-kv-cache", action="store_true")
    ap.add_argument("--out", default=".")
    args = ap.parse_args()

    llm = LLM(
        model=preset_path(args.preset),
        load_format="dummy",
        dtype="bfloat16" if torch.cuda.is_available() else "float32",
        max_model_len=args.prompt_len + args.output_len + 16,
        max_num_batched_tokens=args.chunk,
        kv_cache_memory=int(args.kv_gib * (1 << 30)),
        enable_prefix_caching=False,
        enforce_eager=args.eager,
        disable_hybrid_kv_cache=args.disable_hybrid_kv_cache,
    )
    engine = llm.engine
    rng = random.Random(0)
    params = SamplingParams(temperature=0.0, max_tokens=args.output_len, ignore_eos=True)
    # warm-up request (compiles, graphs)
    engine.add_request("warm", None, params, prompt_token_ids=[1] * 64)
    while engine.has_unfinished_requests():
        engine.step()
    for i in range(args.num_requests):
        prompt = [rng.randrange(10000) for _ in range(args.prompt_len)]
        engine.add_request(f"r{i}", None, params, prompt_token_ids=prompt)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    out: dict = {"device": device, "settings": vars(args)}
    t0 = time.perf_counter()
    for _ in range(args.skip_prefill):
        engine.step()
    out["prefill"] = profile_window(engine, args.window)
    print("prefill", json.dumps(out["prefill"], indent=1), flush=True)
    step_ms = []  # every remaining prefill step's wall time: finds stalls (compiles) outside the window
    while _prefilling(engine):
        t = time.perf_counter()
        engine.step()
        _sync()
        step_ms.append(round((time.perf_counter() - t) * 1e3, 1))
    out["prefill_step_ms"] = step_ms
    out["prefill_all_s"] = round(time.perf_counter() - t0, 3)
    out["prefill_tok_s"] = round(args.num_requests * args.prompt_len / out["prefill_all_s"])
    for _ in range(4):
        engine.step()
    out["decode"] = profile_window(engine, args.window)
    print("decode", json.dumps(out["decode"], indent=1), flush=True)
    while engine.has_unfinished_requests():
        engine.step()
    out["total_s"] = round(time.perf_counter() - t0, 3)
    print(json.dumps({k: out[k] for k in ("prefill_all_s", "prefill_tok_s", "total_s")}))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, f"profile_steps_{args.preset}.json").write_text(json.dumps(out, indent=1))
    llm.close()


if __name__ == "__main__":
    main()
