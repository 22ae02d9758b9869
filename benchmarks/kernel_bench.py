"""K1 kernel benchmark: paged decode / extend attention and K/V writes on one GPU.

Run on the GPU machine (no install needed):

    PYTHONPATH=src python3 benchmarks/kernel_bench.py --out $OUT/k1.json

Sections (each isolated: a failure prints its traceback and the rest still run):
 1. correctness at real sizes vs TorchAttentionBackend (bf16; block sizes 8/16/32/128, GQA 1/4/8,
    head dims 64/128, mixed decode + chunked-prefill batches, forced and heuristic splits);
 2. device copy bandwidth (large tensor copy, bytes read + written / time);
 3. K1 decode: batch 64, context 2048, 32 q heads, 8 KV heads, d 128, bf16, block sizes
    8/16/32/128, plus a mixed-length batch; SDPA flash / cuDNN on contiguous K/V and a naive
    paged version (gather pages, then SDPA); achieved bandwidth = K/V bytes read / time;
 4. decode tile-config sweep and split-count sweep (batch 64 ctx 2048, batch 4 ctx 16384);
 5. extend: 8 sequences x 1024 new tokens over 1024 cached ones vs SDPA flash causal.
Timing: CUDA events around each call after warm-up, L2 flushed before each call, median.
``--smoke`` shrinks every size so the script's plumbing can be checked on CPU under
``TRITON_INTERPRET=1`` (timings then mean nothing).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import random
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before any triton.jit is decorated

from pagedllm.attention.metadata import AttentionMetadata  # noqa: E402
from pagedllm.attention.torch_backend import TorchAttentionBackend  # noqa: E402
from pagedllm.attention.triton_backend import TritonAttentionBackend  # noqa: E402
from pagedllm.kernels import (  # noqa: E402
    default_num_splits,
    paged_decode_attention,
    paged_extend_attention,
    reshape_and_cache,
)

BF16 = torch.bfloat16
RESULTS: dict[str, Any] = {}
ROWS: list[str] = []  # the compact table printed at the end


def timed(fn: Callable[[], object], iters: int, warmup: int, device: torch.device) -> float:
    """Median milliseconds of ``fn`` (CUDA events, L2 flushed before each call)."""
    for _ in range(warmup):
        fn()
    if device.type != "cuda":
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)
    flush = torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device=device)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    torch.cuda.synchronize()
    for i in range(iters):
        flush.zero_()
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends, strict=True))


def section(name: str, fn: Callable[[], object]) -> None:
    """Run one benchmark section; record its traceback instead of dying."""
    print(f"\n=== {name} ===", flush=True)
    t0 = time.perf_counter()
    try:
        fn()
    except Exception:  # noqa: BLE001 - keep the other sections' numbers
        tb = traceback.format_exc()
        print(tb, flush=True)
        RESULTS.setdefault("errors", {})[name] = tb
    print(f"--- {name}: {time.perf_counter() - t0:.1f}s", flush=True)


def row(label: str, ms: float, gbytes: float | None = None, extra: str = "") -> dict[str, Any]:
    """Print and remember one timing line; bandwidth in TB/s when bytes are given."""
    tbps = gbytes / ms if gbytes else None  # GB / ms == TB/s
    text = f"{label:<52} {ms:9.4f} ms" + (f"  {tbps:6.3f} TB/s" if tbps else "") + extra
    print(text, flush=True)
    ROWS.append(text)
    return {"label": label, "ms": ms, "tbps": tbps}


# ---------------------------------------------------------------------------------------------
# Batch builders


def paged_cache(
    seq_lens: list[int], block_size: int, kvh: int, d: int, device: torch.device, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random bf16 cache plus block tables that scatter each sequence over permuted pages."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    pages = [max(1, math.ceil(n / block_size)) for n in seq_lens]
    num_blocks = sum(pages) + 4
    cache = torch.randn(2, num_blocks, block_size, kvh, d, dtype=BF16, device=device)
    perm = torch.randperm(num_blocks, generator=gen)
    tables = torch.zeros(len(seq_lens), max(pages), dtype=torch.int32)
    used = 0
    for i, n in enumerate(pages):
        tables[i, :n] = perm[used : used + n].to(torch.int32)
        used += n
    return cache, tables.to(device)


def metadata_for(
    seqs: list[tuple[int, int]], num_decodes: int, tables: torch.Tensor, block_size: int
) -> AttentionMetadata:
    """Metadata for ``seqs`` = [(seq_len, query_len)], decodes first."""
    device = tables.device
    seq_lens = [s for s, _ in seqs]
    query_lens = [q for _, q in seqs]
    qsl = [0]
    for q in query_lens:
        qsl.append(qsl[-1] + q)
    tab = tables.tolist()
    slots = [
        tab[i][t // block_size] * block_size + t % block_size
        for i, (s, q) in enumerate(seqs)
        for t in range(s - q, s)
    ]
    return AttentionMetadata(
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        block_tables=tables,
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        query_start_loc=torch.tensor(qsl, dtype=torch.int32, device=device),
        max_query_len=max(query_lens),
        max_seq_len=max(seq_lens),
        num_decodes=num_decodes,
        num_decode_tokens=num_decodes,
        block_size=block_size,
        seq_lens_cpu=seq_lens,
        query_lens_cpu=query_lens,
    )


# ---------------------------------------------------------------------------------------------
# 1. Correctness


def check_correctness(device: torch.device, smoke: bool) -> None:
    rng = random.Random(0)
    oracle = TorchAttentionBackend()
    out: list[dict[str, Any]] = []
    max_len = 200 if smoke else 3000
    configs = [(bs, g, 128) for bs in (8, 16, 32, 128) for g in (1, 4, 8)]
    configs += [(bs, g, 64) for bs in (16, 128) for g in (1, 4, 8)]
    if smoke:
        configs = configs[:2] + configs[-1:]
    heads = 8 if smoke else 32
    for block_size, group, d in configs:
        kvh = heads // group
        decodes = [(rng.randint(1, max_len), 1) for _ in range(6 if smoke else 24)]
        prefills = [(n, rng.randint(1, n)) for n in (rng.randint(1, max_len) for _ in range(4))]
        seqs = decodes + prefills
        cache, tables = paged_cache([s for s, _ in seqs], block_size, kvh, d, device, seed=d)
        meta = metadata_for(seqs, len(decodes), tables, block_size)
        num_tokens = sum(q for _, q in seqs)
        query = torch.randn(num_tokens, heads, d, dtype=BF16, device=device)
        new_k = torch.randn(num_tokens, kvh, d, dtype=BF16, device=device)
        new_v = torch.randn(num_tokens, kvh, d, dtype=BF16, device=device)
        ref_cache = cache.clone()
        oracle.write_kv(new_k, new_v, ref_cache, meta.slot_mapping)
        reshape_and_cache(new_k, new_v, cache, meta.slot_mapping)
        write_ok = bool(torch.equal(cache, ref_cache))
        expected = oracle.forward(query, ref_cache, meta, d**-0.5).float()
        for splits in (1, None, 5):
            backend = TritonAttentionBackend(max_model_len=4096, decode_splits=splits)
            got = backend.forward(query, cache, meta, d**-0.5).float()
            err = (got - expected).abs().max().item()
            ok = write_ok and err < 3e-2 and bool(torch.isfinite(got).all())
            out.append(
                {"block_size": block_size, "group": group, "head_dim": d, "splits": splits,
                 "max_abs_err": err, "kv_write_exact": write_ok, "ok": ok}
            )  # fmt: skip
            print(
                f"bs={block_size:<3} gqa={group} d={d:<3} splits={splits!s:<4} "
                f"write={'ok' if write_ok else 'BAD'} max|err|={err:.2e} {'OK' if ok else 'FAIL'}",
                flush=True,
            )
    RESULTS["correctness"] = out
    RESULTS["correctness_all_ok"] = all(r["ok"] for r in out)
    ROWS.append(f"correctness: {sum(r['ok'] for r in out)}/{len(out)} ok")


# ---------------------------------------------------------------------------------------------
# 2-4. Copy bandwidth and decode


def copy_bandwidth(device: torch.device, smoke: bool, iters: int) -> None:
    nbytes = (16 if smoke else 2048) * 1024 * 1024
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = timed(lambda: dst.copy_(src), iters, 3, device)
    RESULTS["copy"] = row("device copy (read+write)", ms, 2 * nbytes / 1e9)


def decode_problem(batch: int, lens: list[int], block_size: int, device: torch.device):
    heads, kvh, d = 32, 8, 128
    cache, tables = paged_cache(lens, block_size, kvh, d, device, seed=block_size)
    seq_lens = torch.tensor(lens, dtype=torch.int32, device=device)
    query = torch.randn(batch, heads, d, dtype=BF16, device=device)
    kv_gb = sum(lens) * kvh * d * 2 * 2 / 1e9
    return cache, tables, seq_lens, query, kv_gb


def bench_decode(device: torch.device, smoke: bool, iters: int) -> None:
    batch, ctx = (4, 256) if smoke else (64, 2048)
    sms = (
        torch.cuda.get_device_properties(device).multi_processor_count
        if device.type == "cuda"
        else 1
    )
    res: dict[str, Any] = {"batch": batch, "ctx": ctx, "num_sms": sms, "rows": []}
    RESULTS["k1_decode"] = res
    splits = default_num_splits(batch, 8, ctx, sms)
    for block_size in (8, 16, 32, 128):
        cache, tables, seq_lens, q, gb = decode_problem(batch, [ctx] * batch, block_size, device)
        out = torch.empty_like(q)

        def run(cache=cache, tables=tables, seq_lens=seq_lens, q=q, out=out) -> None:
            paged_decode_attention(q, cache, tables, seq_lens, 128**-0.5, splits, out=out)

        r = row(f"paged decode bs={block_size} splits={splits}", timed(run, iters, 5, device), gb)
        res["rows"].append({**r, "block_size": block_size, "splits": splits})
    res["kv_gbytes"] = gb
    _bench_sdpa_baselines(res, cache, tables, q, batch, ctx, gb, iters, device)
    # Mixed lengths, uniform in [1, 2 * ctx], seeded.
    rng = random.Random(0)
    lens = [rng.randint(1, 2 * ctx) for _ in range(batch)]
    cache, tables, seq_lens, q, gb = decode_problem(batch, lens, 16, device)
    split_mixed = default_num_splits(batch, 8, max(lens), sms)
    out = torch.empty_like(q)
    ms = timed(
        lambda: paged_decode_attention(q, cache, tables, seq_lens, 128**-0.5, split_mixed, out=out),
        iters, 5, device,
    )  # fmt: skip
    res["mixed"] = row(f"paged decode mixed [1,{2 * ctx}] bs=16 s={split_mixed}", ms, gb)


def _bench_sdpa_baselines(res, cache, tables, q, batch, ctx, gb, iters, device) -> None:
    """Contiguous SDPA (flash, cuDNN) and gather-then-SDPA on the same K/V (block size 128)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kvh, d, group = 8, 128, 4
    block_size = cache.shape[2]
    # GQA as a 4-row query per KV head: every backend accepts it and K/V are read once.
    qg = q.view(batch, kvh, group, d)
    pages = ctx // block_size
    k = cache[0][tables[:, :pages].long()].reshape(batch, ctx, kvh, d).transpose(1, 2).contiguous()
    v = cache[1][tables[:, :pages].long()].reshape(batch, ctx, kvh, d).transpose(1, 2).contiguous()
    ref = F.scaled_dot_product_attention(qg.float(), k.float(), v.float(), scale=d**-0.5)
    got = paged_decode_attention(q, cache, tables, torch.full((batch,), ctx, dtype=torch.int32,
                                 device=device), d**-0.5).view(batch, kvh, group, d)  # fmt: skip
    res["paged_vs_sdpa_max_err"] = (got.float() - ref).abs().max().item()
    names = {"sdpa_flash": "FLASH_ATTENTION", "sdpa_cudnn": "CUDNN_ATTENTION",
             "sdpa_efficient": "EFFICIENT_ATTENTION"}  # fmt: skip
    for key, name in names.items():
        backend = getattr(SDPBackend, name, None)
        try:
            with sdpa_kernel(backend):
                fn = lambda: F.scaled_dot_product_attention(qg, k, v, scale=d**-0.5)  # noqa: E731
                o = fn()
                err = (o.float() - ref).abs().max().item()
                res[key] = row(f"{key} contiguous", timed(fn, iters, 5, device), gb)
                res[key]["max_err"] = err
        except Exception as exc:  # noqa: BLE001 - backend may be unavailable here
            print(f"{key}: unavailable ({type(exc).__name__}: {str(exc)[:200]})", flush=True)
            res[key] = {"error": f"{type(exc).__name__}: {exc}"[:500]}

    def naive() -> torch.Tensor:
        idx = tables[:, :pages].long()
        kk = cache[0][idx].reshape(batch, ctx, kvh, d).transpose(1, 2)
        vv = cache[1][idx].reshape(batch, ctx, kvh, d).transpose(1, 2)
        return F.scaled_dot_product_attention(qg, kk, vv, scale=d**-0.5)

    res["naive_paged"] = row("naive paged (gather + SDPA)", timed(naive, iters, 5, device), gb)


def sweep_decode(device: torch.device, smoke: bool, iters: int) -> None:
    """Tile configs at K1 (block size 16), then split counts for two shapes."""
    sms = (
        torch.cuda.get_device_properties(device).multi_processor_count
        if device.type == "cuda"
        else 1
    )
    res: dict[str, Any] = {"configs": [], "splits": []}
    RESULTS["decode_sweep"] = res
    batch, ctx = (4, 256) if smoke else (64, 2048)
    cache, tables, seq_lens, q, gb = decode_problem(batch, [ctx] * batch, 16, device)
    out = torch.empty_like(q)
    configs = [(bn, w, s) for bn in (32, 64, 128) for w in (4, 8) for s in (1, 2, 3)]
    for bn, w, s in configs[:2] if smoke else configs:
        try:
            fn = lambda bn=bn, w=w, s=s: paged_decode_attention(  # noqa: E731
                q, cache, tables, seq_lens, 128**-0.5, 1, out=out, block_n=bn, num_warps=w,
                num_stages=s,
            )  # fmt: skip
            r = row(
                f"decode cfg block_n={bn} warps={w} stages={s}", timed(fn, iters, 3, device), gb
            )
            res["configs"].append({**r, "block_n": bn, "num_warps": w, "num_stages": s})
        except Exception as exc:  # noqa: BLE001 - e.g. out of shared memory
            print(f"config {bn}/{w}/{s} failed: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
    shapes = [(4, 256), (2, 512)] if smoke else [(64, 2048), (4, 16384)]
    for batch, ctx in shapes:
        cache, tables, seq_lens, q, gb = decode_problem(batch, [ctx] * batch, 16, device)
        out = torch.empty_like(q)
        pick = default_num_splits(batch, 8, ctx, sms)
        for splits in (1, 2, 4, 8, 16):
            fn = functools.partial(
                paged_decode_attention, q, cache, tables, seq_lens, 128**-0.5, splits, out=out
            )
            r = row(f"decode B={batch} ctx={ctx} splits={splits}", timed(fn, iters, 3, device), gb,
                    "  <- heuristic" if splits == pick else "")  # fmt: skip
            res["splits"].append({**r, "batch": batch, "ctx": ctx, "splits": splits,
                                  "heuristic": pick})  # fmt: skip


# ---------------------------------------------------------------------------------------------
# 5. Extend (chunked prefill over a cached prefix)


# (BLOCK_M, BLOCK_N, warps, stages, GQA packing); the default tiles run first, packed
EXTEND_CONFIGS = [(128, 64, 8, 2, False), (128, 64, 8, 3, False), (128, 128, 8, 2, False),
                  (128, 128, 8, 3, False), (64, 64, 4, 3, False), (64, 32, 4, 2, False),
                  (128, 64, 8, 3, True), (64, 64, 4, 3, True)]  # fmt: skip
# the long shape (W-long's second chunk) tries deeper pipelines and wider key tiles too
EXTEND_LONG_CONFIGS = EXTEND_CONFIGS + [(128, 128, 8, 3, True), (128, 32, 4, 3, False), (128, 64, 4, 3, True),
                                        (128, 128, 4, 3, True), (64, 128, 4, 3, True)]  # fmt: skip


def bench_extend(device: torch.device, smoke: bool, iters: int, long: bool = False) -> None:
    """Short shape: 8 x 1024 new over 1024 cached, 32/8 heads (K1's model). ``long``: one
    sequence's 16,384 new tokens over 16,384 cached, 16/8 heads (Qwen3-0.6B): the second
    chunk of a W-long 32k prompt, where the prefill time goes."""
    if long:
        nseq, qlen, prefix = (1, 64, 64) if smoke else (1, 16384, 16384)
        heads, kvh, d, block_size = 16, 8, 128, 16
        iters = max(3, iters // 5)
    else:
        nseq, qlen, prefix = (2, 64, 64) if smoke else (8, 1024, 1024)
        heads, kvh, d, block_size = 32, 8, 128, 16
    ctx = prefix + qlen
    cache, tables = paged_cache([ctx] * nseq, block_size, kvh, d, device, seed=3)
    meta = metadata_for([(ctx, qlen)] * nseq, 0, tables, block_size)
    query = torch.randn(nseq * qlen, heads, d, dtype=BF16, device=device)
    out = torch.empty_like(query)
    pairs = nseq * heads * (qlen * prefix + qlen * (qlen + 1) / 2)
    tflop = 4 * d * pairs / 1e12
    res: dict[str, Any] = {"nseq": nseq, "qlen": qlen, "prefix": prefix, "tflop": tflop}
    RESULTS["extend_long" if long else "extend"] = res

    def ours(bm=None, bn=None, w=None, s=None, pack=None) -> None:
        paged_extend_attention(
            query, cache, tables, meta.seq_lens, meta.query_start_loc, d**-0.5, qlen,
            out=out, block_m=bm, block_n=bn, num_warps=w, num_stages=s, pack_gqa=pack,
        )  # fmt: skip

    res["ours"] = _row_tflops("paged extend (default tiles)", timed(ours, iters, 3, device), tflop)
    configs = EXTEND_LONG_CONFIGS if long else EXTEND_CONFIGS
    res["configs"] = []
    for bm, bn, w, s, pack in configs[:1] if smoke else configs:
        try:
            ms = timed(
                lambda bm=bm, bn=bn, w=w, s=s, p=pack: ours(bm, bn, w, s, p), iters, 3, device
            )
            r = _row_tflops(f"paged extend BM={bm} BN={bn} w={w} s={s} pack={pack:d}", ms, tflop)
            res["configs"].append({**r, "block_m": bm, "block_n": bn, "num_warps": w, "stages": s,
                                   "pack_gqa": pack})  # fmt: skip
        except Exception as exc:  # noqa: BLE001
            print(f"extend config failed: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
    # Contiguous peer: SDPA flash with the causal diagonal at the bottom right (queries last).
    pages = ctx // block_size
    idx = tables[:, :pages].long()
    k = cache[0][idx].reshape(nseq, ctx, kvh, d).repeat_interleave(heads // kvh, 2).transpose(1, 2)
    v = cache[1][idx].reshape(nseq, ctx, kvh, d).repeat_interleave(heads // kvh, 2).transpose(1, 2)
    k, v = k.contiguous(), v.contiguous()
    q4 = query.view(nseq, qlen, heads, d).transpose(1, 2).contiguous()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.bias import causal_lower_right

    mask = causal_lower_right(qlen, ctx)
    ours()
    ref = F.scaled_dot_product_attention(q4, k, v, attn_mask=mask, scale=d**-0.5)
    res["max_err_vs_sdpa"] = (out.view(nseq, qlen, heads, d).transpose(1, 2).float()
                              - ref.float()).abs().max().item()  # fmt: skip
    print(f"extend max|err| vs SDPA: {res['max_err_vs_sdpa']:.2e}", flush=True)
    for key, name in (("sdpa_flash", "FLASH_ATTENTION"), ("sdpa_cudnn", "CUDNN_ATTENTION")):
        try:
            with sdpa_kernel(getattr(SDPBackend, name)):
                fn = lambda: F.scaled_dot_product_attention(  # noqa: E731
                    q4, k, v, attn_mask=mask, scale=d**-0.5
                )
                fn()
                res[key] = _row_tflops(f"{key} causal lower-right (contig)",
                                       timed(fn, iters, 3, device), tflop)  # fmt: skip
        except Exception as exc:  # noqa: BLE001
            print(f"{key}: unavailable ({type(exc).__name__}: {str(exc)[:200]})", flush=True)
            res[key] = {"error": f"{type(exc).__name__}: {exc}"[:500]}


def _row_tflops(label: str, ms: float, tflop: float) -> dict[str, Any]:
    r = row(label, ms, None, f"  {tflop / ms * 1e3:7.1f} TFLOP/s")
    r["tflops"] = tflop / ms * 1e3
    return r


# ---------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="k1.json", help="where to write the JSON results")
    parser.add_argument("--iters", type=int, default=50, help="timed calls per variant")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CPU plumbing check)")
    parser.add_argument("--skip-correctness", action="store_true")
    parser.add_argument("--only", default="", help="comma-separated section names to run")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.smoke:
        print("no CUDA device: run with --smoke for a CPU plumbing check", file=sys.stderr)
        return 2
    import triton

    RESULTS["env"] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "argv": sys.argv,
    }
    print(json.dumps(RESULTS["env"]), flush=True)
    iters = 3 if args.smoke else args.iters
    torch.manual_seed(0)
    steps = [
        ("correctness", lambda: check_correctness(device, args.smoke)),
        ("copy bandwidth", lambda: copy_bandwidth(device, args.smoke, iters)),
        ("K1 decode", lambda: bench_decode(device, args.smoke, iters)),
        ("decode sweeps", lambda: sweep_decode(device, args.smoke, iters)),
        ("extend", lambda: bench_extend(device, args.smoke, iters)),
        ("extend long", lambda: bench_extend(device, args.smoke, iters, long=True)),
    ]
    if args.only:
        steps = [(name, fn) for name, fn in steps if name in args.only.split(",")]
    for name, fn in steps:
        if name == "correctness" and args.skip_correctness:
            continue
        section(name, fn)
        with open(args.out, "w") as fh:  # after every section: a timeout keeps what finished
            json.dump(RESULTS, fh, indent=1)
    print("\n=== summary ===")
    print("\n".join(ROWS))
    copy = RESULTS.get("copy", {}).get("tbps")
    k1 = RESULTS.get("k1_decode", {}).get("rows", [])
    if copy and k1:
        best = max(k1, key=lambda r: r["tbps"])
        print(
            f"K1 best: {best['label']} {best['tbps']:.3f} TB/s = {best['tbps'] / copy:.0%} of copy"
        )
    print(f"errors in: {sorted(RESULTS.get('errors', {})) or 'none'}; JSON -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
