"""Device KV pages and CPU swap space: allocation, swapping and copy-on-write copies.

Layout per layer: one tensor ``[2, num_blocks, block_size, num_kv_heads, head_dim]`` (index 0 is
K, 1 is V), the layout every attention backend reads. The CPU swap space has the same layout
with ``num_cpu_blocks`` pages (pinned memory on CUDA so copies can overlap). Which block moves
where is decided by the KV manager in ``core/``; this class only moves bytes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from pagedllm.core.kv_cache_spec import KVCacheLayout, build_layout
from pagedllm.loader.attention_layout import layer_windows


@dataclass(slots=True)
class KVCacheSpec:
    """Shape of one layer's pages; ``bytes_per_block`` covers all layers, K and V."""

    num_layers: int
    block_size: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype
    # hybrid KV cache (core/kv_cache_spec.py): the page tensor of each layer; layers of
    # different KV cache groups share tensors. None: one tensor per layer
    layer_tensor: tuple[int, ...] | None = None

    @property
    def num_tensors(self) -> int:
        """Page tensors allocated (``group_size`` of the layout; the layer count without)."""
        return self.num_layers if self.layer_tensor is None else max(self.layer_tensor) + 1

    @property
    def bytes_per_block(self) -> int:
        elem = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.num_tensors * self.block_size * self.num_kv_heads * self.head_dim * elem

    def num_blocks_for(self, num_bytes: int) -> int:
        """How many whole blocks fit in ``num_bytes``."""
        return num_bytes // self.bytes_per_block


class CacheEngine:
    """Owns the device KV pool and the CPU swap space of one worker."""

    def __init__(
        self, spec: KVCacheSpec, num_blocks: int, num_cpu_blocks: int, device: torch.device
    ) -> None:
        if num_blocks <= 0:
            raise ValueError(
                f"the KV cache has room for no block of {spec.block_size} tokens: raise "
                "kv_cache_memory / gpu_memory_utilization or lower block_size"
            )
        self.spec = spec
        self.num_blocks = num_blocks
        self.num_cpu_blocks = num_cpu_blocks
        self.device = device
        shape = (2, num_blocks, spec.block_size, spec.num_kv_heads, spec.head_dim)
        # zeros, not empty: a padded attention row may read a page nobody wrote yet, and
        # garbage there could be NaN, which masking by -inf does not remove from a matmul.
        self.page_tensors = [
            torch.zeros(shape, dtype=spec.dtype, device=device) for _ in range(spec.num_tensors)
        ]
        # per layer (aliases: a block id names one page in every tensor, used by the layers
        # of whichever KV cache group holds the block)
        slots = spec.layer_tensor or tuple(range(spec.num_layers))
        self.kv_caches = [self.page_tensors[j] for j in slots]
        cpu_shape = (2, num_cpu_blocks, spec.block_size, spec.num_kv_heads, spec.head_dim)
        pin = device.type == "cuda"
        self.cpu_caches = [
            torch.zeros(cpu_shape, dtype=spec.dtype, pin_memory=pin)
            for _ in range(spec.num_tensors if num_cpu_blocks > 0 else 0)
        ]

    def swap_out(self, pairs: Sequence[tuple[int, int]]) -> None:
        """Copy (device block, cpu block) pairs from the device pool to swap space."""
        if not pairs:
            return
        src = torch.tensor([p[0] for p in pairs], dtype=torch.long, device=self.device)
        dst = torch.tensor([p[1] for p in pairs], dtype=torch.long)
        for gpu, cpu in zip(self.page_tensors, self.cpu_caches, strict=True):
            cpu[:, dst] = gpu[:, src].to("cpu", non_blocking=False)

    def swap_in(self, pairs: Sequence[tuple[int, int]]) -> None:
        """Copy (cpu block, device block) pairs from swap space back into the device pool."""
        if not pairs:
            return
        src = torch.tensor([p[0] for p in pairs], dtype=torch.long)
        dst = torch.tensor([p[1] for p in pairs], dtype=torch.long, device=self.device)
        pin = self.device.type == "cuda"
        for gpu, cpu in zip(self.page_tensors, self.cpu_caches, strict=True):
            staged = cpu[:, src]
            if pin:
                staged = staged.pin_memory()
            gpu[:, dst] = staged.to(self.device, non_blocking=pin)

    def measure_swap_bandwidth(self, max_blocks: int = 64, repeats: int = 3) -> float:
        """Effective bytes/s of one direction of swapping, at the real block size.

        Times ``swap_out`` then ``swap_in`` of up to ``max_blocks`` blocks (best of ``repeats``)
        through the same code path preemption uses, so the per-block overheads of small blocks
        count. Call it at start-up while the pool is empty: it copies blocks that hold nothing.
        Returns 0.0 without swap space (AUTO then never swaps).
        """
        n = min(max_blocks, self.num_blocks, self.num_cpu_blocks)
        if n <= 0:
            return 0.0
        pairs = [(i, i) for i in range(n)]
        self.swap_out(pairs)  # warm-up: first-touch page faults, allocator
        self.swap_in(pairs)
        best = float("inf")
        for _ in range(repeats):
            self._sync()
            start = time.perf_counter()
            self.swap_out(pairs)
            self.swap_in(pairs)
            self._sync()
            best = min(best, time.perf_counter() - start)
        return 2 * n * self.spec.bytes_per_block / max(best, 1e-9)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def copy_blocks(self, pairs: Sequence[tuple[int, int]]) -> None:
        """Copy-on-write: duplicate (src, dst) device blocks in every layer."""
        if not pairs:
            return
        src = torch.tensor([p[0] for p in pairs], dtype=torch.long, device=self.device)
        dst = torch.tensor([p[1] for p in pairs], dtype=torch.long, device=self.device)
        for cache in self.page_tensors:
            cache[:, dst] = cache[:, src]


def kv_cache_layout(hf_config: dict, disable_hybrid: bool = False) -> KVCacheLayout:
    """The KV cache groups of a model (by its per-layer sliding windows)."""
    return build_layout(layer_windows(hf_config), disable_hybrid)
