"""Engine configuration: model + cache + scheduler (+ parallel) configs, validated.

Pure Python (no torch import): the core builds and reads these. Values a user can get wrong
raise ``ValueError`` naming the field and what to change.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields
from typing import Any


class PreemptionMode(str, enum.Enum):
    """How a running request gives its KV blocks back when the pool runs dry."""

    RECOMPUTE = "recompute"  # free the blocks; prefill prompt + generated tokens again later
    SWAP = "swap"  # copy the blocks to CPU swap space and back before resuming
    AUTO = "auto"  # swap when the swap space has room and it is measured cheaper


# what ``kv_cache_dtype`` accepts (vLLM's names): the model dtype, a float dtype, or float8 e4m3
KV_CACHE_DTYPES = ("auto", "float32", "bfloat16", "float16", "fp8", "fp8_e4m3")


@dataclass(slots=True)
class CacheConfig:
    """Where and how big the paged KV cache is."""

    block_size: int = 16
    num_gpu_blocks: int | None = None  # None: sized from memory (kv_cache_memory / utilization)
    kv_cache_memory: int | None = None  # bytes of KV pool; default on CPU: 1 GiB
    gpu_memory_utilization: float = 0.90
    swap_space: int = 0  # bytes of CPU swap space for preempted requests
    num_cpu_blocks: int | None = None  # None: (swap_space + cpu_cache_memory) // bytes per block
    # host tier of the prefix cache: bytes of CPU pages (added to swap_space: one host pool)
    # that keep evicted cached device blocks; 0 = off
    cpu_cache_memory: int = 0
    kv_disk_path: str | None = None  # disk tier directory (needs cpu_cache_memory); None = off
    kv_disk_bytes: int = 0  # disk tier bound in bytes
    enable_prefix_caching: bool = True
    watermark: float = 0.01  # fraction of blocks kept free when admitting new requests
    # "auto": the model's dtype; "fp8" (= "fp8_e4m3"): pages hold float8 e4m3 values with a
    # per-layer K and V scale (attention/kv_quant.py), half the bytes of bf16 per token
    kv_cache_dtype: str = "auto"
    # keep every page of sliding-window layers (one full-attention KV group) instead of
    # freeing those outside the window: for comparisons and debugging
    disable_hybrid_kv_cache: bool = False

    def validate(self) -> None:
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int):
            raise TypeError(f"block_size must be an integer, got {self.block_size!r}")
        if self.block_size <= 0:
            raise ValueError(f"block_size must be a positive integer, got {self.block_size}")
        if self.num_gpu_blocks is not None and self.num_gpu_blocks <= 0:
            raise ValueError(f"num_gpu_blocks must be positive, got {self.num_gpu_blocks}")
        if self.kv_cache_memory is not None and self.kv_cache_memory <= 0:
            raise ValueError(
                f"kv_cache_memory must be a positive byte count, got {self.kv_cache_memory}"
            )
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(
                f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}"
            )
        if self.swap_space < 0:
            raise ValueError(f"swap_space must be >= 0 bytes, got {self.swap_space}")
        for name in ("cpu_cache_memory", "kv_disk_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative byte count, got {value!r}")
        if self.kv_disk_path is not None:
            if self.kv_disk_bytes <= 0:
                raise ValueError("kv_disk_path needs kv_disk_bytes > 0 (the disk tier's bound)")
            if self.cpu_cache_memory <= 0:
                raise ValueError("kv_disk_path needs cpu_cache_memory > 0 (disk sits below host)")
        if not 0.0 <= self.watermark < 1.0:
            raise ValueError(f"watermark must be in [0, 1), got {self.watermark}")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(
                f"kv_cache_dtype must be one of {', '.join(KV_CACHE_DTYPES)}; "
                f"got {self.kv_cache_dtype!r}"
            )


@dataclass(slots=True)
class SchedulerConfig:
    """Per-step limits of continuous batching."""

    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    max_model_len: int = 4096
    enable_chunked_prefill: bool = True
    preemption_mode: PreemptionMode = PreemptionMode.RECOMPUTE
    # decode steps per scheduling round when every running request is a plain decode (one host
    # round trip, one sync for n tokens per request); 1 turns multi-step decoding off
    num_scheduler_steps: int = 1
    # schedule the next decode round while the current one runs on the device (overlaps host
    # work with device work; core/continuation.py). None: on for CUDA devices, off on CPU
    # (where the device is the host, so nothing overlaps and outputs would only come later)
    async_scheduling: bool | None = None
    # the largest ``n`` (samples per request) accepted: each sample holds its own KV and host
    # state, so an unbounded n lets one small request take the whole machine
    max_n: int = 128
    # prompt + max_tokens > max_model_len: False rejects the request (ValueError, HTTP 400, as
    # vLLM and OpenAI do); True cuts max_tokens to the room left (engine/validation.py)
    truncate_max_tokens: bool = False

    def validate(self) -> None:
        for name in (
            "max_num_seqs",
            "max_n",
            "max_num_batched_tokens",
            "max_model_len",
            "num_scheduler_steps",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not self.enable_chunked_prefill and self.max_num_batched_tokens < self.max_model_len:
            raise ValueError(
                "without chunked prefill, max_num_batched_tokens "
                f"({self.max_num_batched_tokens}) must be >= max_model_len ({self.max_model_len})"
            )
        if self.async_scheduling not in (None, True, False):
            raise ValueError(
                f"async_scheduling must be True, False or None, got {self.async_scheduling!r}"
            )
        if not isinstance(self.truncate_max_tokens, bool):
            raise TypeError(
                f"truncate_max_tokens must be True or False, got {self.truncate_max_tokens!r}"
            )
        self.preemption_mode = PreemptionMode(self.preemption_mode)


@dataclass(slots=True)
class ModelSpec:
    """Which model to load and how (the loader fills the architecture details)."""

    model: str | None = None  # path to a GGUF file or HF directory; None: the bundled model
    tokenizer: str | None = None  # None: from the model
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    load_format: str = "auto"  # auto | gguf | safetensors | dummy
    seed: int = 0
    enforce_eager: bool = False  # no CUDA graphs

    def validate(self) -> None:
        if self.dtype not in ("auto", "float32", "bfloat16", "float16", "fp32", "bf16", "fp16"):
            raise ValueError(
                f"dtype must be one of auto, float32, bfloat16, float16; got {self.dtype!r}"
            )
        if self.load_format not in ("auto", "gguf", "safetensors", "dummy"):
            raise ValueError(
                f"load_format must be one of auto, gguf, safetensors, dummy; got {self.load_format!r}"
            )


@dataclass(slots=True)
class ParallelConfig:
    tensor_parallel_size: int = 1

    def validate(self) -> None:
        if self.tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}")


@dataclass(slots=True)
class EngineConfig:
    """Everything the engine needs, validated together."""

    model: ModelSpec = field(default_factory=ModelSpec)
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)

    def validate(self) -> EngineConfig:
        self.model.validate()
        self.cache.validate()
        self.scheduler.validate()
        self.parallel.validate()
        return self

    @classmethod
    def from_flat(cls, **options: Any) -> EngineConfig:
        """Build from flat keyword options (``LLM(...)``, CLI flags): each name goes to the
        sub-config that has that field. Unknown names raise TypeError listing the known ones."""
        parts = {
            "model": ModelSpec,
            "cache": CacheConfig,
            "scheduler": SchedulerConfig,
            "parallel": ParallelConfig,
        }
        values: dict[str, dict[str, Any]] = {part: {} for part in parts}
        owner = {f.name: part for part, kind in parts.items() for f in fields(kind)}
        for name, value in options.items():
            if name not in owner:
                raise TypeError(f"unknown engine option {name!r}; known: {sorted(owner)}")
            values[owner[name]][name] = value
        return cls(**{part: kind(**values[part]) for part, kind in parts.items()})

    def option_names(self) -> list[str]:
        """Every flat option name ``from_flat`` accepts."""
        return [
            f.name
            for part in (self.model, self.cache, self.scheduler, self.parallel)
            for f in fields(part)
        ]
