"""Page-size study: throughput and KV-memory waste across block sizes.

Throughput: the fixed workload through ``pagedllm.benchmark.sweep`` (what
``pagedllm bench throughput --sweep-block-size ...`` runs), each block size ``--repeats`` times in
interleaved order (8,16,..,8,16,..) so drift from a shared machine hits every size alike; the
best and the spread (max - min) are reported. Waste: the memory study's figures
(``benchmarks/memory.py``: real scheduler + KV manager, ShareGPT-like lengths) at the same sizes.

CPU (default): W3, the bundled SmolLM2-135M, 32 chat prompts, 64 tokens each, greedy::

    PYTHONPATH=src python benchmarks/page_size.py --block-sizes 8,16,32,64,128 --repeats 2

GPU (``--gpu``: W1 on the qwen3-0.6b preset with dummy weights; add ``--num-prompts N``)::

    PYTHONPATH=src python3 benchmarks/page_size.py --gpu --num-prompts 256 \
        --out $OUT/page_size_gpu.json --plot $OUT/page_size_gpu.png
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for memory.py next to this file

from memory import run_study  # noqa: E402

from pagedllm.benchmark.sweep import run_throughput_or_sweep  # noqa: E402
from pagedllm.entrypoints.engine_args import add_engine_args, engine_config_from_args  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_engine_args(parser)  # --dtype, --kv-cache-memory, --max-num-seqs ... as for the CLI
    parser.add_argument("--block-sizes", default="8,16,32,64,128")
    parser.add_argument("--repeats", type=int, default=2, help="runs per block size (>= 2)")
    parser.add_argument(
        "--gpu", action="store_true", help="W1 on a GPU: --preset qwen3-0.6b --dummy --device cuda"
    )
    parser.add_argument("--preset", default=None)
    parser.add_argument("--dummy", action="store_true")
    parser.add_argument("--workload", default=None, choices=["w1", "w2", "w3"])
    parser.add_argument("--num-prompts", type=int, default=None)
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--out", default="benchmarks/page_size.json")
    parser.add_argument("--plot", default="benchmarks/plots/page_size.png")
    parser.add_argument("--replot", default=None, help="only redraw --plot from this JSON")
    args = parser.parse_args(argv)
    if args.gpu:
        args.preset = args.preset or "qwen3-0.6b"
        args.dummy = True
        args.device = "cuda" if args.device == "auto" else args.device
        args.workload = args.workload or "w1"
    return args


def measure_throughput(args: argparse.Namespace, sizes: list[int]) -> dict[int, list[dict]]:
    """Every run's result, grouped by block size (interleaved order, fresh engine per run)."""
    args.sweep_block_size = ",".join(str(s) for _ in range(args.repeats) for s in sizes)
    runs = run_throughput_or_sweep(args, engine_config_from_args)["runs"]
    grouped: dict[int, list[dict]] = {s: [] for s in sizes}
    for run in runs:
        grouped[run["block_size"]].append(run)
    return grouped


def summarize(grouped: dict[int, list[dict]], waste: dict) -> list[dict]:
    rows = []
    for size, runs in grouped.items():
        tok_s = [r["output_tok_s"] for r in runs]
        mem = waste["results"].get(f"pagedllm bs={size}", {})
        rows.append(
            {
                "block_size": size,
                "output_tok_s_best": max(tok_s),
                "output_tok_s_median": statistics.median(tok_s),
                "output_tok_s_spread": max(tok_s) - min(tok_s),
                "output_tok_s_runs": tok_s,
                "num_preemptions": [r["num_preemptions"] for r in runs],
                "kv_utilization": mem.get("utilization_mean"),
                "batch_while_queued": mem.get("mean_batch_saturated"),
            }
        )
    return rows


def print_table(rows: list[dict], title: str) -> None:
    print(title)
    print(
        f"{'block':>5s} {'best tok/s':>10s} {'median':>8s} {'spread':>7s} {'runs':>24s} "
        f"{'KV util':>8s} {'batch':>6s}"
    )
    for r in rows:
        runs = ", ".join(f"{t:.1f}" for t in r["output_tok_s_runs"])
        util = r["kv_utilization"]
        print(
            f"{r['block_size']:5d} {r['output_tok_s_best']:10.1f} {r['output_tok_s_median']:8.1f} "
            f"{r['output_tok_s_spread']:7.1f} {runs:>24s} "
            f"{100 * util if util is not None else float('nan'):7.1f}% "
            f"{r['batch_while_queued'] or float('nan'):6.1f}"
        )


def plot(rows: list[dict], title: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["block_size"] for r in rows]
    x = range(len(sizes))
    fig, ax1 = plt.subplots(figsize=(8, 4.8))
    best = [r["output_tok_s_best"] for r in rows]
    lows = [min(r["output_tok_s_runs"]) for r in rows]
    ax1.bar(x, best, color="tab:blue", alpha=0.85, label="output tok/s (best run)")
    ax1.errorbar(
        x,
        best,
        yerr=[[b - lo for b, lo in zip(best, lows, strict=True)], [0] * len(best)],
        fmt="none",
        ecolor="black",
        capsize=4,
        label="spread (worst run)",
    )
    for i, t in enumerate(best):
        ax1.text(i, 0.45 * max(best), f"{t:.0f}\ntok/s", ha="center", color="white", fontsize=9)
    ax1.set_xticks(list(x), [str(s) for s in sizes])
    ax1.set_xlabel("block size (tokens per KV page)")
    ax1.set_ylabel("output tokens/s")
    ax2 = ax1.twinx()
    util = [100 * (r["kv_utilization"] or 0) for r in rows]
    ax2.plot(list(x), util, "o-", color="tab:orange", label="KV utilization (memory study)")
    for i, u in enumerate(util):
        ax2.annotate(
            f"{u:.1f}%",
            (i, u),
            xytext=(0, -16),
            textcoords="offset points",
            ha="center",
            fontsize=8,
            bbox={"boxstyle": "round", "fc": "white", "ec": "tab:orange"},
        )
    ax2.set_ylabel("reserved KV holding token states (%)")
    ax2.set_ylim(min(util) - 25, 102)
    h1, l1 = ax1.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax1.legend(h1 + h2, l1 + l2, loc="lower left", fontsize=8)
    ax1.set_title(title, fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    args = parse_args()
    if args.replot:  # redraw the figure from a saved JSON, measuring nothing
        saved = json.loads(Path(args.replot).read_text())
        plot(saved["rows"], saved["title"], args.plot)
        return
    sizes = [int(s) for s in args.block_sizes.split(",")]
    waste = run_study(sizes, capacity=32768, num_requests=1000, max_model_len=2048)
    grouped = measure_throughput(args, sizes)
    rows = summarize(grouped, waste)
    first = next(iter(grouped.values()))[0]
    device = "GPU" if args.gpu else "CPU"
    title = (
        f"{first['workload']} on {device}: {first['num_requests']} requests, "
        f"{first['output_tokens']} output tokens; best of {args.repeats} runs per size"
    )
    print_table(rows, title)
    result = {
        "title": title,
        "device": device,
        "repeats": args.repeats,
        "rows": rows,
        "memory_workload": waste["workload"],
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    if args.plot:
        plot(rows, title, args.plot)
        print(f"wrote {args.out} and {args.plot}")


if __name__ == "__main__":
    main()
