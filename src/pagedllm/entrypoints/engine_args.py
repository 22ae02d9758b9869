"""Command-line options shared by every subcommand that builds an engine."""

from __future__ import annotations

import argparse

from pagedllm.config import EngineConfig


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    """Model, cache and scheduler options (defaults match ``LLM()``)."""
    parser.add_argument(
        "model",
        nargs="?",
        default=None,
        help="GGUF file or Hugging Face directory (default: bundled SmolLM2-135M)",
    )
    parser.add_argument("--tokenizer", default=None)
    parser.add_argument(
        "--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"]
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--load-format", default="auto", choices=["auto", "gguf", "safetensors", "dummy"]
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument(
        "--kv-cache-memory",
        type=int,
        default=None,
        help="bytes of KV cache (default: 1 GiB on CPU, free memory on GPU)",
    )
    parser.add_argument("--num-gpu-blocks", type=int, default=None)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.90)
    parser.add_argument("--swap-space", type=int, default=0, help="bytes of CPU swap space")
    parser.add_argument(
        "--preemption-mode", default="recompute", choices=["recompute", "swap", "auto"]
    )
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--max-num-batched-tokens", type=int, default=8192)
    parser.add_argument(
        "--max-n", type=int, default=128, help="largest n (samples per request) accepted"
    )
    parser.add_argument(
        "--no-enable-prefix-caching", dest="enable_prefix_caching", action="store_false"
    )
    parser.add_argument(
        "--num-scheduler-steps",
        type=int,
        default=1,
        help="decode steps per host round trip when every request is a plain decode",
    )
    parser.add_argument(
        "--async-scheduling",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="schedule the next decode round while the current one runs (default: on for CUDA)",
    )
    parser.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs")
    parser.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)


def engine_config_from_args(args: argparse.Namespace) -> EngineConfig:
    """Build (and validate) an EngineConfig from parsed options."""
    names = EngineConfig().option_names()
    options = {name: getattr(args, name) for name in names if hasattr(args, name)}
    return EngineConfig.from_flat(**options).validate()
