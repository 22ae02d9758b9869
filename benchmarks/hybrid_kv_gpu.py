"""Hybrid KV cache on the GPU, in one call: correctness first, then capacity and throughput.

    PYTHONPATH=src python3 benchmarks/hybrid_kv_gpu.py --out $OUT          # the GPU session
    PYTHONPATH=src python3 benchmarks/hybrid_kv_gpu.py --out /tmp/h --smoke  # CPU, tiny sizes

Sections (each in try/except; JSON written to ``$OUT/hybrid_kv_gpu.json`` after each):

- ``greedy``: tiny random Gemma 2 (soft-capping) and Gemma 3 models built by transformers,
  float32, prompts 4-10x the window, freeing on: pagedllm on the device (Triton kernels) with
  CUDA graphs and eagerly, and on the CPU (torch path), vs transformers eager on the device,
  token for token (``graph_replays`` shows the graphs really ran).
- ``capacity``: Gemma-3-1B-shaped config (dummy bf16 weights), requests of ``--ctx`` tokens
  (32k) added one at a time, each decoding on, until the next cannot finish its prefill
  without a preemption: how many are resident at once with freeing vs every page kept, in a
  pool of ``--capacity-kv-gib`` (8 GiB keeps the run short; the ratio is the layout's)
  (acceptance: >= 3x).
- ``throughput``: the same config, ``--num-requests`` (256) x ``--prompt-len`` (8k) random
  prompts x ``--output-len`` (512) outputs, ignore_eos, for each of ``--variants`` (freeing
  on/off, CUDA graphs on/off): output tok/s, wall time, and a per-step breakdown
  (``benchmarks/step_stats.py``: plans, mean rows, prefill tokens per mixed plan,
  preemptions, host ms per plan, graph replays); next to the decode floor (weights + live KV
  bytes per step at the measured copy bandwidth) for the batch the pool holds.

Takes about 5 minutes on an H200.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from step_stats import StepStats  # noqa: E402

from pagedllm import LLM, SamplingParams  # noqa: E402
from pagedllm.benchmark.workloads import Workload, preset_path  # noqa: E402

RESULTS: dict = {}


def run_section(name: str, out: Path, fn, *args) -> None:
    """Run one section, keep going on failure, save the JSON after it."""
    start = time.perf_counter()
    print(f"\n===== {name} =====", flush=True)
    try:
        RESULTS[name] = fn(*args)
    except Exception as exc:  # noqa: BLE001 - report and go on to the next section
        traceback.print_exc()
        RESULTS[name] = {"error": f"{type(exc).__name__}: {exc}"}
    RESULTS[name + "_seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(RESULTS[name], default=str)[:2000], flush=True)
    (out / "hybrid_kv_gpu.json").write_text(json.dumps(RESULTS, indent=1, default=str))


def greedy(args) -> dict:
    """pagedllm (device, Triton) and pagedllm (CPU, torch) vs transformers eager (device)."""
    from hybrid_models import hf_greedy, prompts, save_tiny_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = {}
    for name in ("gemma2", "gemma3"):
        with tempfile.TemporaryDirectory() as tmp:
            hf = save_tiny_model(name, Path(tmp)).to(device)
            ps = prompts([40, 75, 33, 80])
            want = [hf_greedy(hf, p, 16) for p in ps]
            params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
            row = {}
            runs = [("cuda-graphs", device, False), ("cuda-eager", device, True)]
            if device == "cpu":
                runs = []
            for label, dev, eager in [*runs, ("cpu", "cpu", True)]:
                llm = LLM(model=tmp, dtype="float32", device=dev, block_size=16,
                          num_gpu_blocks=256, max_num_batched_tokens=48, max_num_seqs=8,
                          max_model_len=256, enforce_eager=eager)  # fmt: skip
                stats = StepStats.attach(llm.engine)
                got = [o.outputs[0].token_ids for o in llm.generate(ps, params, use_tqdm=False)]
                row[label] = {
                    "equal": got == want,
                    "groups": llm.engine.scheduler.kv_manager.num_groups,
                    "graph_replays": stats.graph_replays,
                    "first_diff": [_first_diff(g, w) for g, w in zip(got, want, strict=True)],
                }
                llm.close()
            out[name] = row
    return out


def _first_diff(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), None)


def _engine(args, freeing: bool, max_len: int, graphs: bool = False, kv_bytes: int = 0) -> LLM:
    return LLM(
        model=args.preset,
        load_format="dummy",
        dtype="bfloat16" if torch.cuda.is_available() else "float32",
        block_size=args.block_size,
        max_model_len=max_len,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.chunk,
        disable_hybrid_kv_cache=not freeing,
        kv_cache_memory=kv_bytes or args.kv_bytes,
        enable_prefix_caching=False,
        enforce_eager=not graphs,
    )


def capacity(args) -> dict:
    """Resident ``--ctx``-token requests, freeing on vs off (added one at a time)."""
    out = {}
    for freeing in (True, False):
        # long outputs so the first requests still decode when the last are added
        llm = _engine(args, freeing, args.ctx + args.capacity_out + 16,
                      kv_bytes=int(args.capacity_kv_gib * (1 << 30)))  # fmt: skip
        engine = llm.engine
        sched = engine.scheduler
        rng = random.Random(0)
        count, patience = 0, -(-args.ctx // args.chunk) + 4
        start = time.perf_counter()
        params = SamplingParams(temperature=0.0, max_tokens=args.capacity_out, ignore_eos=True)
        while count < args.max_num_seqs:
            prompt = [rng.randrange(10000) for _ in range(args.ctx)]
            try:
                engine.add_request(f"c{count}", None, params, prompt_token_ids=prompt)
            except ValueError as exc:  # not even one fits
                out.setdefault("refused", str(exc))
                break
            decoding = 0
            for _ in range(patience):
                engine.step()
                decoding = sum(
                    1 for r in sched.running if r.num_computed_tokens >= r.num_prompt_tokens
                )
                if sched.num_preemptions or decoding > count:
                    break
            if len(sched.requests) < count + 1:
                out.setdefault("lower_bound", "a request finished before the pool filled")
                break
            if sched.num_preemptions or decoding <= count:
                break
            count += 1
        kv = sched.kv_manager
        out["freeing" if freeing else "keep"] = {
            "resident": count,
            "pool_blocks": kv.num_blocks,
            "groups": kv.num_groups,
            "bytes_per_block": engine.runner.kv_spec.bytes_per_block,
            "seconds": round(time.perf_counter() - start, 1),
        }
        llm.close()
        del llm
        _free_device()
    out["ratio"] = out["freeing"]["resident"] / max(out["keep"]["resident"], 1)
    return out


def _free_device() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def copy_bandwidth() -> float:
    """Device copy bandwidth in bytes/s (read + write of a 1 GiB buffer), best of 5."""
    if not torch.cuda.is_available():
        return 0.0
    x = torch.empty(1 << 28, dtype=torch.float32, device="cuda")
    y = torch.empty_like(x)
    best = float("inf")
    for _ in range(5):
        torch.cuda.synchronize()
        t = time.perf_counter()
        y.copy_(x)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * x.numel() * 4 / best


def throughput(args) -> dict:
    """``num_requests`` x ``prompt_len`` x ``output_len``, freeing on vs off."""
    rng = random.Random(0)
    prompts = [[rng.randrange(10000) for _ in range(args.prompt_len)]
               for _ in range(args.num_requests)]  # fmt: skip
    work = Workload("hybrid-8k", prompts, [args.output_len] * args.num_requests)
    bandwidth = copy_bandwidth()
    out: dict = {"copy_bandwidth_GBps": round(bandwidth / 1e9, 1)}
    from pagedllm.benchmark.throughput import run_workload

    for variant in args.variants:
        freeing, graphs = VARIANTS[variant]
        llm = _engine(args, freeing, args.prompt_len + args.output_len + 16, graphs=graphs)
        engine = llm.engine
        stats = StepStats.attach(engine)
        result = run_workload(engine, work, temperature=0.0).as_dict()
        result["steps"] = stats.summary()
        kv = engine.scheduler.kv_manager
        ctx = args.prompt_len + args.output_len // 2
        need = kv.max_blocks_needed(ctx, 1)  # a request's blocks mid-decode
        batch = min(args.num_requests, args.max_num_seqs, kv.num_blocks // max(need, 1))
        weights = sum(p.numel() * p.element_size() for p in engine.runner.model.parameters())
        kv_bytes = batch * need * engine.runner.kv_spec.bytes_per_block
        if bandwidth:
            result["floor_decode_tok_s"] = round(batch * bandwidth / (weights + kv_bytes))
        result.update(resident_batch=batch, pool_blocks=kv.num_blocks, groups=kv.num_groups)
        out[variant] = result
        print(variant, json.dumps(result, default=str), flush=True)
        llm.close()
        del llm, engine
        _free_device()
    tok_s = {v: out[v]["output_tok_s"] for v in args.variants}
    if "free-graphs" in tok_s and "keep-graphs" in tok_s:
        out["speedup_graphs"] = tok_s["free-graphs"] / tok_s["keep-graphs"]
    if "free-eager" in tok_s and "keep-eager" in tok_s:
        out["speedup_eager"] = tok_s["free-eager"] / tok_s["keep-eager"]
    return out


# variant -> (free pages outside the window, CUDA graphs)
VARIANTS = {
    "free-graphs": (True, True),
    "keep-graphs": (False, True),
    "free-eager": (True, False),
    "keep-eager": (False, False),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, runs on CPU")
    parser.add_argument("--ctx", type=int, default=32768)
    parser.add_argument("--capacity-out", type=int, default=2048, help="max_tokens there")
    parser.add_argument("--num-requests", type=int, default=256)
    parser.add_argument("--prompt-len", type=int, default=8192)
    parser.add_argument("--output-len", type=int, default=512)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--chunk", type=int, default=8192, help="max_num_batched_tokens")
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--kv-gib", type=float, default=40.0, help="KV pool (GiB), throughput")
    parser.add_argument("--capacity-kv-gib", type=float, default=8.0, help="KV pool, capacity")
    parser.add_argument("--variants", nargs="+", default=["free-graphs", "keep-graphs",
                        "free-eager"], choices=list(VARIANTS), help="throughput runs")  # fmt: skip
    parser.add_argument("--sections", nargs="+", default=["greedy", "capacity", "throughput"])
    args = parser.parse_args()
    if args.smoke:
        args.ctx, args.num_requests, args.prompt_len, args.output_len = 1024, 4, 600, 8
        args.capacity_out = 64
        args.chunk, args.max_num_seqs, args.kv_gib = 512, 16, 0.01
        args.capacity_kv_gib = 0.01
    args.kv_bytes = int(args.kv_gib * (1 << 30))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    args.preset = preset_path("gemma-3-1b")
    if args.smoke:  # the Gemma-3-1B layer pattern at toy width, so the CPU runs it in seconds
        cfg = json.loads(Path(args.preset).read_text())
        cfg.update(hidden_size=64, intermediate_size=128, num_attention_heads=2, head_dim=32,
                   vocab_size=10000, num_hidden_layers=12, sliding_window=64)  # fmt: skip
        args.preset = str(out / "gemma-3-toy.json")
        Path(args.preset).write_text(json.dumps(cfg))
    RESULTS["settings"] = {k: v for k, v in vars(args).items() if k != "out"}
    RESULTS["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    for name in args.sections:
        run_section(name, out, globals()[name], args)
    print("\n===== summary =====")
    for name in args.sections:
        if name != "throughput":
            print(name, json.dumps(RESULTS.get(name), default=str)[:1500])
    _print_throughput(RESULTS.get("throughput") or {})


def _print_throughput(result: dict) -> None:
    """One line per throughput variant: rate, then the per-step breakdown."""
    cols = ("plans", "pure_decode_plans", "mean_rows", "prefill_tokens_per_mixed_plan",
            "preemptions", "host_schedule_ms_per_plan", "host_launch_ms_per_plan",
            "graph_replays")  # fmt: skip
    print("variant       tok/s   elapsed  " + "  ".join(cols))
    for variant in VARIANTS:
        row = result.get(variant)
        if not isinstance(row, dict):
            continue
        steps = row.get("steps", {})
        print(f"{variant:<12} {row['output_tok_s']:>7.0f} {row['elapsed_s']:>8.1f}  "
              + "  ".join(str(steps.get(c)) for c in cols))  # fmt: skip
    for key in ("speedup_graphs", "speedup_eager", "error"):
        if key in result:
            print(key, result[key])


if __name__ == "__main__":
    main()
