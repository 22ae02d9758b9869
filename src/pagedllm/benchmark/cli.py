"""``pagedllm bench throughput | multiturn | serve``: the benchmark subcommands."""

from __future__ import annotations

import argparse
import json
import sys

from pagedllm.entrypoints.engine_args import add_engine_args, engine_config_from_args


def add_bench_args(
    parser: argparse.ArgumentParser, formatter_class: type = argparse.HelpFormatter
) -> None:
    sub = parser.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    tp = sub.add_parser(
        "throughput",
        help="offline throughput on a fixed workload (W1/W2/W3, W-long)",
        formatter_class=formatter_class,
    )
    add_engine_args(tp)
    tp.add_argument(
        "--preset",
        default=None,
        help="qwen3-0.6b, qwen3-0.6b-128k (131,072 positions, RoPE as configured) or qwen3-8b "
        "(HF-style configs)",
    )
    tp.add_argument("--dummy", action="store_true", help="random weights (load_format=dummy)")
    tp.add_argument(
        "--workload",
        default=None,
        choices=["w1", "w2", "w3", "long", "long-128k"],
        help="default: w2 for the 8b preset, w1 for other presets, w3 otherwise; long: 8 x "
        "32,000-token prompts, long-128k: 1 x 128,000 (prefill with 1 output token, then "
        "decode ms/step with 128; default preset qwen3-0.6b / qwen3-0.6b-128k, dummy weights, "
        "max-model-len raised to fit)",
    )
    tp.add_argument("--num-prompts", type=int, default=None, help="run only the first N requests")
    tp.add_argument(
        "--temperature", type=float, default=None, help="default: the workload's (0.6 or 0)"
    )
    tp.add_argument(
        "--sweep-block-size",
        default=None,
        help="comma-separated block sizes: run the workload at each and recommend one",
    )
    tp.add_argument("--out", default=None, help="write the results as JSON here")
    tp.set_defaults(func=run_bench_throughput)
    mt = sub.add_parser(
        "multiturn",
        help="multi-turn chats through a small device pool, host KV tier off vs on",
        formatter_class=formatter_class,
    )
    add_engine_args(mt)
    from pagedllm.benchmark.multiturn_cli import add_multiturn_args, run_bench_multiturn

    add_multiturn_args(mt)
    mt.set_defaults(func=run_bench_multiturn)
    serve = sub.add_parser(
        "serve",
        help="load a running server (concurrency sweep; needs the 'bench' extra: httpx)",
        formatter_class=formatter_class,
    )
    from pagedllm.benchmark.serving import add_bench_serve_args, run_bench_serve

    add_bench_serve_args(serve)
    serve.set_defaults(func=run_bench_serve)


def run_bench_throughput(args: argparse.Namespace) -> int:
    from pagedllm.benchmark.sweep import run_throughput_or_sweep

    results = run_throughput_or_sweep(args, engine_config_from_args)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(0)
