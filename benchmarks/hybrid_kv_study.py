"""Hybrid KV cache study (CPU, core only): KV bytes per request and the largest concurrent batch
in one pool, with and without freeing the pages outside sliding windows.

For Gemma-3-1B-, Gemma-2-2B- and Mistral-7B-shaped configs (the shipped presets) at 4k, 32k and
128k contexts. Everything runs through the real ``Scheduler`` and ``KVCacheManager`` with a fake
runner (no model): the KV layout comes from the same ``build_layout`` the engine uses, the pool
is a fixed byte budget (bf16 pages) cut into blocks of that layout's size, and

* **KV bytes / request** = the most live blocks one request (prompt of ``ctx - out`` tokens,
  ``out`` output tokens, chunked prefill) ever held, times the bytes of a block;
* **concurrent batch** = how many requests of that context can be resident (decoding) at once:
  they are added one at a time, each decoding on, until the next one cannot complete its
  prefill without the scheduler preempting someone (capped at ``max_num_seqs``, 256 as the
  engine's default).

    PYTHONPATH=src python3 benchmarks/hybrid_kv_study.py --out benchmarks/results \
        --plot benchmarks/plots/hybrid_kv.png
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from pagedllm.benchmark.workloads import preset_path
from pagedllm.config import CacheConfig, SchedulerConfig
from pagedllm.core.kv_cache_spec import KVCacheLayout, build_layout
from pagedllm.core.request import Request
from pagedllm.core.scheduler import Scheduler
from pagedllm.loader.attention_layout import layer_windows
from pagedllm.sampling_params import SamplingParams

PRESETS = ("gemma-3-1b", "gemma-2-2b", "mistral-7b")
CONTEXTS = (4096, 32768, 131072)
DTYPE_BYTES = 2  # bf16 pages


def block_bytes(cfg: dict, layout: KVCacheLayout, block_size: int) -> int:
    """Bytes of one block of ``layout``: K and V of ``group_size`` layers."""
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * head_dim
    return 2 * layout.group_size * block_size * kv * DTYPE_BYTES


def _scheduler(layout: KVCacheLayout, num_blocks: int, ctx: int, args) -> Scheduler:
    sched_cfg = SchedulerConfig(
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.chunk,
        max_model_len=ctx + 8,
        enable_chunked_prefill=True,
    )
    cache = CacheConfig(block_size=args.block_size, watermark=0.0, enable_prefix_caching=False)
    return Scheduler(sched_cfg, cache, num_blocks, 0, layout.windows)


def _request(rid: str, ctx: int, out: int) -> Request:
    prompt = [(i * 31 + len(rid)) % 1000 + 1 for i in range(ctx - out)]
    params = SamplingParams(max_tokens=out, ignore_eos=True)
    return Request(rid, prompt, params, eos_token_ids=frozenset(), max_tokens=out)


def _step(sched: Scheduler) -> None:
    out = sched.schedule()
    sampled = {s.request_id: 7 for s in out.scheduled if s.sample}
    sched.update_from_output(out, sampled)


def peak_blocks(layout: KVCacheLayout, ctx: int, args) -> tuple[int, int]:
    """(most live blocks, live blocks in its last decode step) of one request of ``ctx``."""
    per_group_max = -(-ctx // args.block_size) + 2
    sched = _scheduler(layout, layout.num_groups * per_group_max + 2, ctx, args)
    sched.add_request(_request("r", ctx, args.out_tokens))
    peak = last = 0
    while sched.has_unfinished_requests():
        _step(sched)
        last = sched.kv_manager.num_blocks_of("r") or last
        peak = max(peak, last)
    return peak, last


def max_concurrency(layout: KVCacheLayout, num_blocks: int, ctx: int, args) -> tuple[int, str]:
    """Requests of context ``ctx`` resident at once: add them one at a time (each keeps
    decoding, so the earlier ones grow a little) until one can no longer finish its prefill
    without a preemption. Returns (count, what stopped it)."""
    out = args.resident_tokens
    sched = _scheduler(layout, num_blocks, ctx + out, args)
    patience = -(-ctx // args.chunk) + 4
    count = 0
    while count < args.max_num_seqs:
        try:
            sched.add_request(_request(f"r{count}", ctx + out, out))
        except ValueError:  # "needs N blocks": not even one fits this pool
            return count, "refused"
        new = sched.requests[f"r{count}"]
        for _ in range(patience):
            _step(sched)
            if sched.num_preemptions or new.num_computed_tokens >= new.num_prompt_tokens:
                break
        if len(sched.requests) < count + 1:
            return count, "a request finished (lower bound)"
        if sched.num_preemptions or new.num_computed_tokens < new.num_prompt_tokens:
            return count, "memory"
        count += 1
    return count, "max_num_seqs"


def study(args) -> list[dict]:
    rows = []
    for preset in args.presets:
        cfg = json.loads(Path(preset_path(preset)).read_text())
        windows = layer_windows(cfg)
        for ctx in args.contexts:
            for freeing in (True, False):
                t0 = time.perf_counter()
                layout = build_layout(windows, disable_hybrid=not freeing)
                per_block = block_bytes(cfg, layout, args.block_size)
                num_blocks = args.kv_gib * (1 << 30) // per_block
                peak, decode = peak_blocks(layout, ctx, args)
                batch, limit = max_concurrency(layout, num_blocks, ctx, args)
                rows.append(
                    dict(
                        preset=preset,
                        context=ctx,
                        freeing=freeing,
                        groups=layout.num_groups,
                        group_size=layout.group_size,
                        block_bytes=per_block,
                        pool_blocks=num_blocks,
                        peak_blocks_per_request=peak,
                        kv_bytes_per_request=peak * per_block,
                        decode_blocks_per_request=decode,
                        decode_kv_bytes_per_request=decode * per_block,
                        max_concurrent=batch,
                        concurrency_limit=limit,
                        seconds=round(time.perf_counter() - t0, 2),
                    )
                )
                print(_fmt(rows[-1]), flush=True)
    return rows


def _fmt(r: dict) -> str:
    mib = r["kv_bytes_per_request"] / (1 << 20)
    dec = r["decode_kv_bytes_per_request"] / (1 << 20)
    on = "free " if r["freeing"] else "keep "
    return (
        f"{r['preset']:<11} {r['context']:>7} {on} groups={r['groups']:<2} "
        f"KV/request peak={mib:>9.1f} decode={dec:>9.1f} MiB  concurrent={r['max_concurrent']:>5} ({r['concurrency_limit']}, {r['seconds']} s)"
    )


def plot(rows: list[dict], path: Path) -> None:
    """Bar chart: concurrent requests with vs without freeing, per config and context."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    presets = list(dict.fromkeys(r["preset"] for r in rows))
    fig, axes = plt.subplots(1, len(presets), figsize=(4.2 * len(presets), 3.6), squeeze=False)
    for ax, preset in zip(axes[0], presets, strict=True):
        mine = [r for r in rows if r["preset"] == preset]
        ctxs = sorted({r["context"] for r in mine})
        xs = range(len(ctxs))
        for off, freeing, label in ((-0.2, True, "freeing"), (0.2, False, "every page kept")):
            ys = [
                next(
                    r["max_concurrent"]
                    for r in mine
                    if r["context"] == c and r["freeing"] == freeing
                )
                for c in ctxs
            ]
            ax.bar([x + off for x in xs], ys, width=0.4, label=label)
        ax.set_xticks(list(xs), [f"{c // 1024}k" for c in ctxs])
        ax.set_yscale("log")
        ax.set_title(preset)
        ax.set_xlabel("context")
    axes[0][0].set_ylabel("concurrent requests in the pool")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="directory for hybrid_kv_study.json")
    parser.add_argument("--plot", default=None, help="PNG path for the bar chart")
    parser.add_argument("--kv-gib", type=int, default=16, help="KV pool budget (GiB)")
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--chunk", type=int, default=8192, help="max_num_batched_tokens")
    parser.add_argument("--out-tokens", dest="out_tokens", type=int, default=256)
    parser.add_argument("--resident-tokens", type=int, default=2048, help="max_tokens there")
    parser.add_argument("--max-num-seqs", type=int, default=256, help="engine default")
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--contexts", nargs="+", type=int, default=list(CONTEXTS))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (seconds)")
    args = parser.parse_args()
    if args.smoke:
        args.kv_gib, args.contexts, args.chunk = 1, [4096], 2048
    rows = study(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "plot")}
    (out / "hybrid_kv_study.json").write_text(
        json.dumps({"settings": settings, "rows": rows}, indent=1)
    )
    if args.plot:
        plot(rows, Path(args.plot))


if __name__ == "__main__":
    main()
