"""W-long on the GPU: where a long-context step's time goes, and the decode split sweep.

    PYTHONPATH=src python3 benchmarks/long_context.py --out DIR [--smoke]

Sections (each isolated: a failure prints its traceback and the rest still run):
 1. copy bandwidth (the floor's denominator);
 2. decode kernel split sweep at the W-long shapes (8 x 32k and 1 x 128k contexts, 16 query /
    8 KV heads, d 128, block 16, bf16): time per call (CUDA events, L2 flushed, median) and
    achieved K/V bandwidth, checked against the torch reference first;
 3. end to end through ``LLM.generate`` (Qwen3-0.6B shape, dummy bf16 weights, default
    settings): 8 x 32,000-token prompts with 1 output token (prefill) and with 128 (decode),
    decode time per step next to the KV-read floor;
 4. a torch-profiler window of steady decode steps at 8 x 32k: device busy fraction, kernels,
    and the host time of each engine step split into schedule / launch / collect / the rest;
 5. the peer: transformers ``Qwen3ForCausalLM`` (sdpa) forward of the same prompts one at a
    time on contiguous tensors (``logits_to_keep=1``).
``--smoke`` shrinks every size to check the plumbing on CPU (timings then mean nothing).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
import traceback
from collections import defaultdict
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from pagedllm import LLM  # noqa: E402
from pagedllm.benchmark import workloads  # noqa: E402
from pagedllm.sampling_params import SamplingParams  # noqa: E402
from profile_steps import kernel_totals  # noqa: E402

RESULTS: dict = {}


def section(name):
    def wrap(fn):
        def run(*args, **kwargs):
            t = time.perf_counter()
            try:
                RESULTS[name] = fn(*args, **kwargs)
            except Exception:  # noqa: BLE001 - one failing section must not hide the others
                RESULTS[name] = {"error": traceback.format_exc()}
                print(RESULTS[name]["error"], flush=True)
            print(f"[{name}] {time.perf_counter() - t:.1f} s", flush=True)

        return run

    return wrap


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_cuda(fn, iters: int, flush: torch.Tensor | None = None) -> float:
    """Median ms of ``fn`` over ``iters`` calls (events; L2 flushed before each when given)."""
    if not torch.cuda.is_available():
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        if flush is not None:
            flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


@section("copy_bandwidth")
def copy_bandwidth(smoke: bool) -> dict:
    n = (1 << 20) if smoke else (1 << 30)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    src = torch.empty(n, dtype=torch.uint8, device=dev).random_(0, 255)
    dst = torch.empty_like(src)
    ms = time_cuda(lambda: dst.copy_(src), 20)
    return {"bytes": n, "ms": ms, "tb_s": 2 * n / ms / 1e9}


@section("decode_split_sweep")
def decode_split_sweep(smoke: bool) -> dict:
    from pagedllm.attention.metadata import build_metadata
    from pagedllm.attention.torch_backend import TorchAttentionBackend
    from pagedllm.kernels import default_num_splits, paged_decode_attention

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    bs, kvh, qh, d = 16, 8, 16, 128
    shapes = [(2, 64), (1, 96)] if smoke else [(8, 32000), (1, 128000)]
    splits_list = [1, 4] if smoke else [4, 5, 8, 16, 32, 64, 128, 256]
    sms = torch.cuda.get_device_properties(0).multi_processor_count if dev == "cuda" else 8
    flush = torch.empty(256 << 20, dtype=torch.uint8, device=dev) if dev == "cuda" else None
    out: dict = {}
    for num_seqs, ctx in shapes:
        blocks_per = -(-ctx // bs)
        num_blocks = num_seqs * blocks_per + 1
        cache = torch.randn(2, num_blocks, bs, kvh, d, dtype=torch.bfloat16, device=dev)
        perm = torch.randperm(num_seqs * blocks_per).tolist()
        tables = [perm[i * blocks_per : (i + 1) * blocks_per] for i in range(num_seqs)]
        meta = build_metadata([1] * num_seqs, [ctx] * num_seqs, tables, bs, dev)
        q = torch.randn(num_seqs, qh, d, dtype=torch.bfloat16, device=dev)
        scale = d**-0.5
        # the oracle on the shorter shape only (a 128k gather in float is slow, not wrong)
        ref = TorchAttentionBackend().forward(q, cache, meta, scale) if ctx <= 32000 else None
        kv_bytes = 2 * num_seqs * ctx * kvh * d * 2
        rows = {}
        for splits in splits_list:

            def call(splits=splits, q=q, cache=cache, meta=meta, scale=scale):
                return paged_decode_attention(
                    q, cache, meta.block_tables, meta.seq_lens, scale, num_splits=splits
                )

            got = call()
            ok = None
            if ref is not None and torch.isfinite(ref).all():
                ok = float((got.float() - ref.float()).norm() / ref.float().norm())
            ms = time_cuda(call, 5 if smoke else 50, flush)
            rows[splits] = {"ms": ms, "tb_s": kv_bytes / ms / 1e9, "rel_err_vs_torch": ok}
        heuristic = default_num_splits(num_seqs, kvh, ctx, sms)
        out[f"{num_seqs}x{ctx}"] = {"kv_bytes": kv_bytes, "heuristic": heuristic, "rows": rows}
        del cache
    return out


def make_llm(smoke: bool, max_model_len: int, **extra) -> LLM:
    kwargs = dict(load_format="dummy", max_model_len=max_model_len)
    if torch.cuda.is_available():
        kwargs["dtype"] = "bfloat16"
    else:
        kwargs.update(dtype="float32", kv_cache_memory=256 << 20)
    kwargs.update(extra)
    return LLM(workloads.preset_path("qwen3-0.6b"), **kwargs)


def long_prompts(num: int, length: int, seed: int = 0) -> list[list[int]]:
    """Random token ids; a new ``seed`` for every timed run, so no run hits the prefix cache."""
    import random

    rng = random.Random(seed)
    return [[rng.randint(0, 10000) for _ in range(length)] for _ in range(num)]


def timed_generate(llm: LLM, prompts, max_tokens: int) -> float:
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    sync()
    t = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    sync()
    assert all(len(o.outputs[0].token_ids) == max_tokens for o in outs)
    return time.perf_counter() - t


@section("step_log")
def step_log(smoke: bool, state: dict) -> dict:
    """Every engine step of a fresh 8 x 32k x 128 run: its make-up and its wall time."""
    llm = state["llm"]
    engine = llm.engine
    num, length, new = (2, 48, 4) if smoke else (8, 32000, 128)
    params = SamplingParams(temperature=0.0, max_tokens=new, ignore_eos=True)
    for i, p in enumerate(long_prompts(num, length, seed=6)):
        engine.add_request(f"log-{i}", None, params, prompt_token_ids=p, stream=False)
    plans = []
    orig = engine.scheduler.schedule

    def schedule():
        out = orig()
        plans.append((len(out.scheduled), out.num_decodes, out.num_batched_tokens))
        return out

    engine.scheduler.schedule = schedule
    rows = []
    sync()
    start = time.perf_counter()
    try:
        while engine.has_unfinished_requests():
            n_before = len(plans)
            t = time.perf_counter()
            engine.step()
            sync()
            plan = plans[-1] if len(plans) > n_before else None
            rows.append((round((time.perf_counter() - t) * 1e3, 2), plan))
    finally:
        engine.scheduler.schedule = orig
    total = time.perf_counter() - start
    mixed = [ms for ms, plan in rows if plan and plan[2] > plan[1]]
    pure = [ms for ms, plan in rows if not plan or plan[2] == plan[1]]
    return {
        "total_s": total,
        "steps": len(rows),
        "steps_with_prefill": len(mixed),
        "ms_in_steps_with_prefill": sum(mixed),
        "pure_decode_steps": len(pure),
        "ms_in_pure_decode_steps": sum(pure),
        "rows": rows,
    }


@section("end_to_end_1x128k")
def end_to_end_128k(smoke: bool) -> dict:
    num, length, new = (1, 96, 4) if smoke else (1, 128000, 128)
    llm = make_llm(smoke, length + new + 16)
    try:
        return _end_to_end(llm, num, length, new)
    finally:
        del llm
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


@section("end_to_end")
def end_to_end(smoke: bool, state: dict) -> dict:
    num, length, new = (2, 48, 4) if smoke else (8, 32000, 128)
    llm = make_llm(smoke, length + new + 16)
    state["llm"] = llm
    return _end_to_end(llm, num, length, new)


def _end_to_end(llm: LLM, num: int, length: int, new: int) -> dict:
    llm.generate([[5] * 32], SamplingParams(max_tokens=2), use_tqdm=False)  # warm-up
    prefill = [timed_generate(llm, long_prompts(num, length, seed), 1) for seed in (1, 2)]
    full = timed_generate(llm, long_prompts(num, length, 3), new)
    cached = timed_generate(llm, long_prompts(num, length, 3), new)  # prefix-cache hit
    per_step = (full - min(prefill)) / (new - 1)
    cfg = llm.engine.model_config
    kv_per_token = 2 * cfg["num_hidden_layers"] * cfg["num_key_value_heads"] * 128 * 2
    kv_bytes = num * (length + new // 2) * kv_per_token
    return {
        "prompts": f"{num} x {length}",
        "prefill_s": prefill,
        "full_s": full,
        "full_again_cached_prefix_s": cached,
        "decode_ms_per_step_from_cached": (cached - 0) * 1e3 / new,
        "decode_ms_per_step": per_step * 1e3,
        "kv_bytes_per_step": kv_bytes,
        "num_blocks": llm.engine.scheduler.kv_manager.num_blocks,
    }


@section("decode_profile")
def decode_profile(smoke: bool, state: dict) -> dict:
    llm = state["llm"]
    engine = llm.engine
    num, length, window = (2, 48, 3) if smoke else (8, 32000, 24)
    prompts = long_prompts(num, length, seed=4)
    params = SamplingParams(temperature=0.0, max_tokens=window * 3 + 8, ignore_eos=True)
    for i, p in enumerate(prompts):
        engine.add_request(f"prof-{i}", None, params, prompt_token_ids=p, stream=False)
    sched = engine.scheduler
    while any(r.num_computed_tokens < r.num_prompt_tokens for r in sched.requests.values()):
        engine.step()
    for _ in range(4):
        engine.step()
    host = _host_split(engine, window)
    sync()
    acts = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts) as prof:
        t = time.perf_counter()
        for _ in range(window):
            engine.step()
        sync()
        wall = time.perf_counter() - t
    while engine.has_unfinished_requests():
        engine.step()
    busy, top = kernel_totals(prof, 20)
    return {
        "window_steps": window,
        "wall_ms_per_step": wall * 1e3 / window,
        "gpu_ms_per_step": busy / 1e3 / window,
        "busy_fraction": busy / 1e3 / (wall * 1e3) if wall else None,
        "top_kernels_ms_per_step": [(k, round(v[0] / 1e3 / window, 4), v[1]) for k, v in top],
        "host_split_ms_per_step": host,
        "graphs": _graph_info(engine),
    }


@section("prefill_profile")
def prefill_profile(smoke: bool, state: dict) -> dict:
    """Kernels of a whole 8 x 32k prefill (fresh prompts), per kernel name."""
    llm = state["llm"]
    num, length = (2, 48) if smoke else (8, 32000)
    params = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
    prompts = long_prompts(num, length, seed=5)
    acts = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    sync()
    with torch.profiler.profile(activities=acts) as prof:
        t = time.perf_counter()
        llm.generate(prompts, params, use_tqdm=False)
        sync()
        wall = time.perf_counter() - t
    busy, top = kernel_totals(prof, 15)
    return {
        "wall_s": wall,
        "gpu_s": busy / 1e6,
        "max_num_batched_tokens": llm.engine.config.scheduler.max_num_batched_tokens,
        "top_kernels_s": [(k, round(v[0] / 1e6, 4), v[1]) for k, v in top],
    }


def _host_split(engine, steps: int) -> dict:
    """Wall time of each part of ``engine.step`` over ``steps`` steps, ms per step."""
    totals: dict[str, float] = defaultdict(float)
    wrapped = []

    def wrap(obj, name, label):
        orig = getattr(obj, name)

        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return orig(*args, **kwargs)
            finally:
                totals[label] += time.perf_counter() - t

        setattr(obj, name, timed)
        wrapped.append((obj, name, orig))

    wrap(engine.scheduler, "schedule", "schedule")
    wrap(engine.scheduler, "schedule_continuation", "schedule_continuation")
    wrap(engine.scheduler, "update_from_output", "update_from_output")
    wrap(engine, "_launch", "launch")
    wrap(engine, "_complete", "complete (collect + update + outputs)")
    t = time.perf_counter()
    try:
        for _ in range(steps):
            engine.step()
        sync()
    finally:
        for obj, name, orig in wrapped:
            setattr(obj, name, orig)
    totals["step_wall"] = time.perf_counter() - t
    return {k: round(v * 1e3 / steps, 3) for k, v in totals.items()}


def _graph_info(engine) -> dict:
    runner = engine.runner
    graphs = getattr(runner, "graphs", None) or getattr(runner, "cuda_graphs", None)
    if graphs is None:
        return {"graphs": None}
    return {
        "sizes": list(getattr(graphs, "sizes", [])),
        "max_model_len": getattr(graphs, "max_model_len", None),
    }


@section("transformers_prefill")
def transformers_prefill(smoke: bool) -> dict:
    from transformers import AutoConfig, AutoModelForCausalLM

    num, length = (2, 48) if smoke else (8, 32000)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    config = AutoConfig.from_pretrained(workloads.preset_path("qwen3-0.6b"))
    config._attn_implementation = "sdpa"
    with torch.device(dev):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    prompts = long_prompts(num, length)
    times = []
    with torch.inference_mode():
        model(torch.tensor([prompts[0][:64]], device=dev), logits_to_keep=1)
        for _ in range(2):
            sync()
            t = time.perf_counter()
            for p in prompts:
                model(torch.tensor([p], device=dev), logits_to_keep=1, use_cache=False)
            sync()
            times.append(time.perf_counter() - t)
    return {"prompts": f"{num} x {length}", "seconds": times}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--skip", default="", help="comma-separated section names to skip")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    RESULTS["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    state: dict = {}
    if "copy_bandwidth" not in skip:
        copy_bandwidth(args.smoke)
    if "decode_split_sweep" not in skip:
        decode_split_sweep(args.smoke)
    if "end_to_end" not in skip:
        end_to_end(args.smoke, state)
        if "decode_profile" not in skip and "llm" in state:
            decode_profile(args.smoke, state)
        if "prefill_profile" not in skip and "llm" in state:
            prefill_profile(args.smoke, state)
        if "step_log" not in skip and "llm" in state:
            step_log(args.smoke, state)
        state.pop("llm", None)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if "end_to_end_1x128k" not in skip:
        end_to_end_128k(args.smoke)
    if "transformers_prefill" not in skip:
        transformers_prefill(args.smoke)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "long_context.json").write_text(json.dumps(RESULTS, indent=1, default=str))
    brief = {k: v for k, v in RESULTS.items() if k != "decode_split_sweep"}
    if isinstance(brief.get("step_log"), dict):
        brief["step_log"] = {k: v for k, v in brief["step_log"].items() if k != "rows"}
    print(json.dumps(brief, indent=1, default=str)[-9000:])


if __name__ == "__main__":
    main()
