"""Paged decode attention at W1's shapes: split count and tile configuration sweep.

    PYTHONPATH=src python3 benchmarks/decode_w1_sweep.py --out $OUT/decode_w1.json

K1 (kernel_bench.py) measures a uniform batch (64 x 2048, GQA 4). W1 decodes Qwen3-0.6B
(16 query heads, 8 KV heads, head_dim 128, block 16) over up to 256 sequences whose contexts are
W1's prompt lengths plus the tokens generated so far: mixed lengths. In a W1 profile the
kernel reached only ~1.9 TB/s there (44% of copy) against 93% at K1, so this sweeps what the
launch controls: context splits, keys per tile, warps and pipeline stages, at three points of
the run (batch 256 early, 128 mid, 32 in the tail). Bandwidth = K/V bytes read / time.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))
sys.path.insert(0, str(ROOT))

from kernel_bench import paged_cache, timed  # noqa: E402

from pagedllm.benchmark import workloads  # noqa: E402
from pagedllm.kernels import default_num_splits, paged_decode_attention  # noqa: E402

HEADS, KVH, D, BS = 16, 8, 128, 16


def w1_lengths(batch: int, progress: int, seed: int) -> list[int]:
    """Context lengths of ``batch`` W1 requests after ``progress`` decode steps."""
    load = workloads.w1()
    rng = random.Random(seed)
    pairs = list(zip(load.prompts, load.output_lens, strict=True))
    alive = [(len(p), n) for p, n in pairs if n > progress]
    rng.shuffle(alive)
    return [p + progress for p, _ in alive[:batch]]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="decode_w1.json")
    ap.add_argument("--iters", type=int, default=30)
    args = ap.parse_args()
    device = torch.device("cuda")
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    results = []
    points = [(256, 50), (256, 400), (256, 700), (256, 950)]  # batch = requests still alive
    for batch, progress in points:
        lens = w1_lengths(batch, progress, seed=batch + progress)
        batch = len(lens)
        cache, tables = paged_cache(lens, BS, KVH, D, device, seed=1)
        seq_lens = torch.tensor(lens, dtype=torch.int32, device=device)
        q = torch.randn(batch, HEADS, D, dtype=torch.bfloat16, device=device)
        out = torch.empty_like(q)
        gb = sum(lens) * KVH * D * 2 * 2 / 1e9
        ref = paged_decode_attention(q, cache, tables, seq_lens, D**-0.5, 1).float()
        heuristic = default_num_splits(batch, KVH, 4096, sms)
        print(f"\n# batch {batch} progress {progress}: mean ctx {sum(lens) / batch:.0f}, "
              f"max {max(lens)}, {gb:.3f} GB, heuristic splits {heuristic}", flush=True)  # fmt: skip
        for splits in (1, 2, 4, 8, 16):
            for bn, warps, stages in ((64, 4, 2), (32, 4, 2), (64, 4, 3), (128, 8, 2), (64, 8, 3),
                                      (32, 2, 3), (16, 2, 2)):  # fmt: skip
                run = functools.partial(
                    paged_decode_attention, q, cache, tables, seq_lens, D**-0.5, splits,
                    out=out, block_n=bn, num_warps=warps, num_stages=stages,
                )  # fmt: skip

                try:
                    err = (run().float() - ref).abs().max().item()
                    ms = timed(run, args.iters, 3, device)
                except Exception as exc:  # noqa: BLE001 - e.g. shared memory
                    print(f"s={splits} bn={bn} w={warps} st={stages}: {type(exc).__name__}")
                    continue
                tbps = gb / ms
                print(f"s={splits:<2} bn={bn:<3} w={warps} st={stages}  {ms:8.4f} ms "
                      f"{tbps:6.3f} TB/s err {err:.1e}", flush=True)  # fmt: skip
                results.append({"batch": batch, "progress": progress, "splits": splits,
                                "block_n": bn, "num_warps": warps, "num_stages": stages,
                                "ms": ms, "tbps": tbps, "max_err": err,
                                "heuristic_splits": heuristic})  # fmt: skip
        Path(args.out).write_text(json.dumps(results, indent=1))
    best: dict = {}
    for r in results:
        key = (r["batch"], r["progress"])
        if key not in best or r["ms"] < best[key]["ms"]:
            best[key] = r
    print("\nbest per point:", flush=True)
    for r in best.values():
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
