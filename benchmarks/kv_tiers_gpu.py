"""Host KV tier on the GPU: copy bandwidths, then the multi-turn benchmark tiers off vs on.

    PYTHONPATH=src python3 benchmarks/kv_tiers_gpu.py --out DIR [--smoke]

1. Correctness: the multi-turn workload's greedy outputs with the host tier on vs off (bf16:
   equal up to batch-shape rounding; the match fraction is reported, float32 on CPU is exact).
2. Floor: pinned host -> device and device -> host copy bandwidth of one large buffer (CUDA
   events, best of 5).
3. Achieved: ``CacheEngine.to_device`` / ``to_host`` of a batch of whole blocks at the W1
   model's page shape (consecutive and scattered host pages), as a fraction of the floor.
4. ``pagedllm bench multiturn`` for each of ``--presets`` (dummy bf16 weights; default
   Qwen3-0.6B then Qwen3-8B at the same shape): 16 conversations, each with its own
   3,072-token document, 4 turns of 256-token questions and 32-token answers, waves of 4, a
   device pool of 2,000 blocks (32k tokens) against ~75k tokens of histories, host tier 16 GiB:
   TTFT p50/p99, output tok/s, prefill tokens saved, bytes moved and the load bandwidth inside
   the engine; the TTFT ratios off/on. 0.6B shows why the tier gains little on a small model
   (copying a token's KV costs about as much as prefilling it); 8B is where it pays.

``--smoke`` runs tiny shapes on whatever device there is (CPU in CI) to test the script.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

import torch

from pagedllm.benchmark import workloads
from pagedllm.benchmark.multiturn import MultiTurnSpec, compare, format_table
from pagedllm.config import EngineConfig
from pagedllm.engine.llm_engine import LLMEngine
from pagedllm.worker.cache_engine import CacheEngine, KVCacheSpec


def _time(fn, device: torch.device, repeats: int = 5) -> float:  # noqa: ANN001
    """Best seconds of ``fn`` (CUDA events on a GPU, perf_counter on CPU)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            best = min(best, start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
    return best


def copy_floor(device: torch.device, nbytes: int) -> dict:
    """Pinned host <-> device bandwidth of one contiguous buffer (the floor for tier copies)."""
    pin = device.type == "cuda"
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=pin)
    dev = torch.empty(nbytes, dtype=torch.uint8, device=device)
    h2d = _time(lambda: dev.copy_(host, non_blocking=True), device)
    d2h = _time(lambda: host.copy_(dev, non_blocking=True), device)
    return {"bytes": nbytes, "h2d_GBps": nbytes / h2d / 1e9, "d2h_GBps": nbytes / d2h / 1e9}


def tier_copies(device: torch.device, num_blocks: int, smoke: bool) -> dict:
    """CacheEngine's batched load / write-back of ``num_blocks`` whole blocks."""
    layers, heads, dim = (2, 2, 16) if smoke else (28, 8, 128)  # Qwen3-0.6B pages
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    spec = KVCacheSpec(layers, 16, heads, dim, dtype)
    cache = CacheEngine(spec, num_blocks * 2, num_blocks * 2, device)
    # correctness first: a block written back and loaded elsewhere is bit-identical
    for t in cache.page_tensors:
        t.normal_()
    cache.to_host([(3, 5)])
    cache.to_device([(5, 7)])
    cache.wait_copies()
    for t in cache.page_tensors:
        assert torch.equal(t[:, 3], t[:, 7]), "a block changed on its way through the host"
    rng = random.Random(0)
    dev = list(range(num_blocks))
    runs = {
        "consecutive": list(range(num_blocks)),
        "scattered": rng.sample(range(2 * num_blocks), num_blocks),
    }
    out = {"block_bytes": spec.bytes_per_block, "num_blocks": num_blocks}
    nbytes = num_blocks * spec.bytes_per_block
    for name, pages in runs.items():
        load = _time(lambda p=pages: cache.to_device(list(zip(p, dev, strict=True))), device)
        store = _time(lambda p=pages: cache.to_host(list(zip(dev, p, strict=True))), device)
        out[f"load_{name}_GBps"] = nbytes / load / 1e9
        out[f"writeback_{name}_GBps"] = nbytes / store / 1e9
    return out


def multiturn(device: torch.device, smoke: bool, preset: str, host_gib: int) -> dict:
    """Tiers off vs on through the engine (dummy weights of ``preset``)."""
    if smoke:
        spec = MultiTurnSpec(4, 2, 32, 16, 4, 1, doc_len=48)  # 8-block histories, one a wave
        blocks, host, max_len = 12, 64 << 20, 512
    else:
        # histories of 3,840..4,736 tokens (16 x ~4.7k = 75k tokens, 4.7k blocks); the
        # device pool holds 2,000 blocks: one wave (4 x 4.7k) fits, the next turn's history
        # of a conversation is evicted by the three waves in between
        spec = MultiTurnSpec(16, 4, 512, 256, 32, 4, doc_len=3072)
        blocks, host, max_len = 2000, host_gib << 30, 8192

    def make_engine(cpu_cache_memory: int) -> LLMEngine:
        config = EngineConfig.from_flat(
            model=workloads.preset_path(preset),
            load_format="dummy",
            dtype="bfloat16" if device.type == "cuda" else "float32",
            device=str(device),
            block_size=16,
            num_gpu_blocks=blocks,
            max_model_len=max_len,
            cpu_cache_memory=cpu_cache_memory,
        )
        return LLMEngine.from_config(config.validate())

    t0 = time.perf_counter()
    result = compare(make_engine, spec, host)
    result["preset"], result["wall_s"] = preset, time.perf_counter() - t0
    print(f"--- {preset} ({result['wall_s']:.0f} s)", flush=True)
    print(format_table(result), flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for kv_tiers.json")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes (CPU test)")
    parser.add_argument(
        "--presets",
        default="qwen3-0.6b,qwen3-8b",
        help="models of the multi-turn runs (dummy weights), comma-separated: qwen3-8b, where "
        "prefill costs far more than loading its KV, and qwen3-0.6b, where it does not",
    )
    parser.add_argument("--host-gib", type=int, default=16, help="host tier size of the 'on' run")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}
    results["floor"] = copy_floor(device, (8 << 20) if args.smoke else (1 << 30))
    results["tier_copies"] = tier_copies(device, 16 if args.smoke else 256, args.smoke)
    floor = results["floor"]["h2d_GBps"]
    for key in ("load_consecutive_GBps", "load_scattered_GBps"):
        results["tier_copies"][key.replace("_GBps", "_of_floor")] = (
            results["tier_copies"][key] / floor
        )
    print(json.dumps({k: results[k] for k in ("device", "floor", "tier_copies")}, indent=1))
    presets = ["qwen3-0.6b"] if args.smoke else args.presets.split(",")
    results["multiturn"] = {}
    for preset in presets:
        results["multiturn"][preset] = multiturn(device, args.smoke, preset, args.host_gib)
        with open(os.path.join(args.out, "kv_tiers.json"), "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)  # after each model: a timeout keeps what ran
    return 0


if __name__ == "__main__":
    sys.exit(main())
