"""Options and entry point of ``pagedllm bench multiturn`` (``benchmark/multiturn.py``)."""

from __future__ import annotations

import argparse
import dataclasses
import json

from pagedllm.benchmark.multiturn import SPEC_HELP, MultiTurnSpec, compare, format_table


def add_multiturn_args(parser: argparse.ArgumentParser) -> None:
    """The workload's shape and the host tier size of the 'on' run."""
    for field in dataclasses.fields(MultiTurnSpec):
        if field.name == "seed":
            continue  # the engine's --seed seeds the prompts too
        flag = "--" + field.name.replace("_", "-")
        parser.add_argument(flag, type=int, default=field.default, help=SPEC_HELP[field.name])
    parser.add_argument("--preset", default=None, help="qwen3-0.6b or qwen3-8b (HF-style config)")
    parser.add_argument("--dummy", action="store_true", help="random weights (load_format=dummy)")
    parser.add_argument(
        "--host-tier-bytes",
        type=int,
        default=1 << 30,
        help="cpu_cache_memory of the 'on' run (the 'off' run uses 0)",
    )
    parser.add_argument("--out", default=None, help="write the results as JSON here")


def run_bench_multiturn(args: argparse.Namespace) -> int:
    """Run tiers off and on with the same engine options; print a table (and JSON)."""
    from pagedllm.benchmark import workloads
    from pagedllm.engine.llm_engine import LLMEngine
    from pagedllm.entrypoints.engine_args import engine_config_from_args

    if args.preset:
        args.model = workloads.preset_path(args.preset)
    if args.dummy:
        args.load_format = "dummy"
    spec = MultiTurnSpec(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(MultiTurnSpec)}
    )

    def make_engine(cpu_cache_memory: int) -> LLMEngine:
        args.cpu_cache_memory = cpu_cache_memory
        return LLMEngine.from_config(engine_config_from_args(args))

    result = compare(make_engine, spec, args.host_tier_bytes)
    print(format_table(result))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return 0
