"""FP8-page attention kernel variants against bf16 pages, at real sizes, in one GPU call.

    PYTHONPATH=src python3 benchmarks/fp8_kernel_variants.py --out $OUT [--smoke]

Qwen3-0.6B attention shape (16 query / 8 KV heads, d 128, block 16). For every decode shape
(8 x 32k, 1 x 128k, W1-like 256 x 700) and extend shape (the last 8,192 queries of a 32k
prompt): bf16 pages at the kernel defaults, then every fp8 variant (``fp8_path`` x
``fp8_cvt_bits`` of ``paged_decode_attention``, tile shapes of both kernels): its error
against the torch path on the same fp8 pages (relative L2) and ms per call (CUDA events, L2
flushed, median). The floor is the K/V bytes at the device's copy bandwidth. ``--smoke``
shrinks everything so the plumbing runs on CPU (Triton interpreter); its timings mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent / "src"))

from fp8_kv_gpu import DEV, _paged_case, _rel, decode_case  # noqa: E402
from long_context import RESULTS, copy_bandwidth, section, time_cuda  # noqa: E402

from pagedllm.attention.kv_quant import default_kv_scale, quantize  # noqa: E402
from pagedllm.attention.torch_backend import TorchAttentionBackend  # noqa: E402
from pagedllm.kernels import paged_decode_attention, paged_extend_attention  # noqa: E402
from pagedllm.kernels.paged_decode import FP8_PATHS  # noqa: E402

BS, KVH, QH, D = 16, 8, 16, 128
# (fp8_path, fp8_cvt_bits, block_n, num_warps): every path x conversion at the default tile,
# then tiles that keep more fp8 bytes in flight per program (a 64-key fp8 tile is half the
# bytes of a bf16 one) for the tensor-core paths
DECODE_VARIANTS = [(p, bits, 64, 4) for p in sorted(FP8_PATHS) for bits in (False, True)] + [
    (p, False, n, w) for p in ("dot", "dot_kt") for n, w in ((128, 4), (128, 8), (64, 8), (32, 4))
]
# (block_m, block_n, num_warps, num_stages) of the extend kernel; the first is its default
EXTEND_TILES = [
    (128, 128, 8, 3),
    (128, 128, 8, 2),
    (128, 64, 8, 3),
    (128, 64, 4, 3),
    (64, 64, 4, 3),
]


def _floor_ms(nbytes: int) -> float | None:
    bw = RESULTS.get("copy_bandwidth", {}).get("tb_s")
    return round(nbytes / (bw * 1e9), 4) if bw and DEV == "cuda" else None


@section("decode")
def decode(smoke: bool, iters: int, flush) -> dict:
    shapes = [(2, 64), (1, 96), (4, 40)] if smoke else [(8, 32000), (1, 128000), (256, 700)]
    sms = torch.cuda.get_device_properties(0).multi_processor_count if DEV == "cuda" else 8
    scale = default_kv_scale(DEV)
    out: dict = {}
    for num_seqs, ctx in shapes:
        cache16, cache8, meta, q, heuristic = decode_case(num_seqs, ctx, BS, KVH, QH, D, sms)
        splits = sorted({heuristic, 64}) if ctx >= 32000 else [heuristic]
        ref = TorchAttentionBackend().forward(q, cache8, meta, D**-0.5, kv_scale=scale)
        row: dict = {"heuristic_splits": heuristic}
        nbytes = 2 * num_seqs * ctx * KVH * D
        row["floor_ms"] = {"bf16": _floor_ms(2 * nbytes), "fp8": _floor_ms(nbytes)}

        def run(cache, kv_scale, s, q=q, meta=meta, **kw):
            return paged_decode_attention(q, cache, meta.block_tables, meta.seq_lens, D**-0.5,
                                          num_splits=s, kv_scale=kv_scale, **kw)  # fmt: skip

        def timed(cache, kv_scale, s, run=run, **kw):
            return round(time_cuda(lambda: run(cache, kv_scale, s, **kw), iters, flush), 4)

        row["bf16"] = {s: timed(cache16, None, s) for s in splits}
        for path, bits, block_n, warps in DECODE_VARIANTS:
            kw = dict(fp8_path=path, fp8_cvt_bits=bits, block_n=block_n, num_warps=warps)
            name = f"{path}{'_bits' if bits else ''}_n{block_n}_w{warps}"
            try:
                err = _rel(run(cache8, scale, heuristic, **kw), ref)
                ms = {s: timed(cache8, scale, s, **kw) for s in splits}
                row[name] = {"rel_err_vs_torch": round(err, 6), "ms": ms,
                             "speedup_vs_bf16": {s: round(row["bf16"][s] / ms[s], 3) for s in splits}}  # fmt: skip
            except Exception as exc:  # a variant that does not compile must not hide the rest
                row[name] = {"error": repr(exc)[:300]}
        out[f"{num_seqs}x{ctx}"] = row
    return out


@section("extend")
def extend(smoke: bool, iters: int, flush) -> dict:
    from pagedllm.attention.metadata import build_metadata

    ctx, qlen = (96, 32) if smoke else (32000, 8192)
    cache16, tables, _ = _paged_case(1, ctx, BS, KVH, D)
    cache8 = quantize(cache16, None)
    meta = build_metadata([qlen], [ctx], tables, BS, DEV)
    q = torch.randn(qlen, QH, D, dtype=torch.bfloat16, device=DEV)
    scale = default_kv_scale(DEV)
    ref = TorchAttentionBackend().forward(q, cache8, meta, D**-0.5, kv_scale=scale)

    def run(cache, kv_scale, tile=None):
        bm, bn, w, s = tile or (None, None, None, None)
        return paged_extend_attention(
            q, cache, meta.block_tables, meta.seq_lens, meta.query_start_loc, D**-0.5,
            max_query_len=qlen, kv_scale=kv_scale, block_m=bm, block_n=bn, num_warps=w,
            num_stages=s,
        )  # fmt: skip

    row: dict = {"prompt": f"{qlen} queries over {ctx} keys",
                 "bf16_default_ms": round(time_cuda(lambda: run(cache16, None), iters, flush), 4)}  # fmt: skip
    for tile in [None] if smoke else EXTEND_TILES:
        name = "fp8_default" if tile is None else "fp8_m{}_n{}_w{}_s{}".format(*tile)
        try:
            err = _rel(run(cache8, scale, tile), ref)
            ms = time_cuda(lambda tile=tile: run(cache8, scale, tile), iters, flush)
            row[name] = {"rel_err_vs_torch": round(err, 6), "ms": round(ms, 4),
                         "speedup_vs_bf16": round(row["bf16_default_ms"] / ms, 3)}  # fmt: skip
        except Exception as exc:
            row[name] = {"error": repr(exc)[:300]}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=".", help="directory for fp8_kernel_variants.json")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (CPU plumbing check)")
    args = ap.parse_args()
    RESULTS["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    RESULTS["triton"] = __import__("triton").__version__
    iters = 3 if args.smoke else 30
    flush = torch.empty(256 << 20, dtype=torch.uint8, device=DEV) if DEV == "cuda" else None
    copy_bandwidth(args.smoke)
    for fn in (decode, extend):
        fn(args.smoke, iters, flush)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        Path(args.out, "fp8_kernel_variants.json").write_text(json.dumps(RESULTS, indent=1))
    print(json.dumps(RESULTS, indent=1)[-12000:])


if __name__ == "__main__":
    main()
