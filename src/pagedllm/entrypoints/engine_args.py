"""Command-line options shared by every subcommand that builds an engine.

The model is given the same way everywhere: as the first positional argument, or with
``--model`` (an alias, as ``vllm serve`` accepts). Memory sizes take units (``2GiB``, ``512MB``);
``--swap-space`` counts GiB when no unit is given, like vLLM's.
"""

from __future__ import annotations

import argparse
import re

from pagedllm.config import KV_CACHE_DTYPES, EngineConfig

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str, default_unit: str = "b") -> int:
    """``"2GiB"`` -> 2147483648, ``"512MB"`` -> 512000000; a bare number is in ``default_unit``.

    Units: B, KB/MB/GB/TB (powers of 1000), KiB/MiB/GiB/TiB (powers of 1024), case-insensitive.
    Raises ValueError on anything else (argparse turns it into a usage error).
    """
    match = _SIZE.match(str(text))
    if match is None:
        raise ValueError(f"{text!r} is not a size: write e.g. 2GiB, 512MB or 1073741824")
    number, unit = match.groups()
    scale = _UNITS.get((unit or default_unit).lower())
    if scale is None:
        raise ValueError(f"unknown unit {unit!r} in {text!r}: use B, KB, MB, GB, KiB, MiB or GiB")
    return int(float(number) * scale)


def _bytes(text: str) -> int:
    try:
        return parse_size(text, "b")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _gib(text: str) -> int:
    try:
        return parse_size(text, "gib")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_model_args(parser: argparse.ArgumentParser, positional: bool = True) -> None:
    """``[MODEL]`` and ``--model MODEL`` (the same thing; give at most one)."""
    if positional:
        parser.add_argument(
            "model_positional",
            nargs="?",
            default=None,
            metavar="MODEL",
            help="GGUF file or Hugging Face directory (default: the bundled SmolLM2-135M)",
        )
    parser.add_argument(
        "--model",
        dest="model",
        default=None,
        help="the model, as an option (alias of the MODEL argument)",
    )


def add_engine_args(parser: argparse.ArgumentParser, positional_model: bool = True) -> None:
    """Model, cache, scheduler and threading options (defaults match ``LLM()``)."""
    add_model_args(parser, positional_model)
    parser.add_argument("--tokenizer", default=None, help="tokenizer path (default: the model's)")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="weights and activations (auto: bfloat16 on GPU, the CPU's fastest otherwise)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--load-format",
        default="auto",
        choices=["auto", "gguf", "safetensors", "dummy"],
        help="how to read the model (dummy: random weights, for benchmarks)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampler")
    parser.add_argument("--block-size", type=int, default=16, help="tokens per KV page")
    parser.add_argument(
        "--kv-cache-memory",
        type=_bytes,
        default=None,
        metavar="SIZE",
        help="KV pool size, e.g. 2GiB or 512MB (bytes without a unit; "
        "default: 1 GiB on CPU, --gpu-memory-utilization on GPU)",
    )
    parser.add_argument(
        "--kv-cache-dtype",
        default="auto",
        choices=list(KV_CACHE_DTYPES),
        help="dtype of the KV pages (auto: the model's; fp8 = fp8_e4m3: float8 e4m3 with a "
        "per-layer K and V scale, twice the tokens in the same memory)",
    )
    parser.add_argument(
        "--num-gpu-blocks", type=int, default=None, help="KV pages (overrides the sizes above)"
    )
    parser.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=0.90,
        help="fraction of GPU memory for weights, activations and the KV pool",
    )
    parser.add_argument(
        "--swap-space",
        type=_gib,
        default=0,
        metavar="SIZE",
        help="CPU memory for swapped-out KV pages: GiB without a unit (like vLLM), or e.g. 512MiB",
    )
    parser.add_argument(
        "--cpu-cache-memory",
        type=_bytes,
        default=0,
        metavar="SIZE",
        help="host memory keeping the prefix-cache pages the device evicts (host KV tier; "
        "e.g. 4GiB; bytes without a unit; 0 = off)",
    )
    parser.add_argument(
        "--kv-disk-path", default=None, help="directory of the disk KV tier (below the host tier)"
    )
    parser.add_argument(
        "--kv-disk-bytes",
        type=_bytes,
        default=0,
        metavar="SIZE",
        help="bound of the disk KV tier, e.g. 100GiB (bytes without a unit)",
    )
    parser.add_argument(
        "--preemption-mode",
        default="recompute",
        choices=["recompute", "swap", "auto"],
        help="what a request preempted for lack of pages gives up: recompute, swap, or auto",
    )
    parser.add_argument(
        "--max-model-len", type=int, default=4096, help="longest prompt + output, in tokens"
    )
    parser.add_argument(
        "--max-num-seqs", type=int, default=256, help="most requests running at once"
    )
    parser.add_argument(
        "--max-num-batched-tokens", type=int, default=8192, help="most tokens in one step"
    )
    parser.add_argument(
        "--no-enable-prefix-caching",
        dest="enable_prefix_caching",
        action="store_false",
        help="turn off sharing of KV pages between prompts with a common prefix",
    )
    parser.add_argument(
        "--truncate-max-tokens",
        action="store_true",
        help="cut max_tokens to fit the context instead of rejecting the request",
    )
    parser.add_argument(
        "--disable-hybrid-kv-cache",
        action="store_true",
        help="keep every KV page of sliding-window layers (no freeing outside the window)",
    )
    parser.add_argument(
        "--max-n", type=int, default=128, help="largest n (samples per request) accepted"
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
    parser.add_argument(
        "--tensor-parallel-size", "-tp", type=int, default=1, help="GPUs to shard the model over"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (torch.set_num_threads; default: torch's, one per core). "
        "On a shared machine fewer threads can be much faster",
    )


def resolve_model(args: argparse.Namespace) -> str | None:
    """The model from ``MODEL`` or ``--model``; both given and different is an error."""
    positional = getattr(args, "model_positional", None)
    option = getattr(args, "model", None)
    if positional is not None and option is not None and positional != option:
        raise ValueError(
            f"two models given: {positional!r} and --model {option!r}; give one of them"
        )
    return option if option is not None else positional


def apply_threads(args: argparse.Namespace) -> None:
    """Set torch's CPU thread count from ``--threads`` (no-op when unset)."""
    threads = getattr(args, "threads", None)
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    import torch

    torch.set_num_threads(threads)


def engine_config_from_args(args: argparse.Namespace) -> EngineConfig:
    """Build (and validate) an EngineConfig from parsed options; applies ``--threads``."""
    args.model = resolve_model(args)
    apply_threads(args)
    names = EngineConfig().option_names()
    options = {name: getattr(args, name) for name in names if hasattr(args, name)}
    return EngineConfig.from_flat(**options).validate()
