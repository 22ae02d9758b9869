"""Device KV pages and the host pool: allocation, swapping, tier copies, copy-on-write.

Layout per layer: one tensor ``[2, num_blocks, block_size, num_kv_heads, head_dim]`` (index 0 is
K, 1 is V), the layout every attention backend reads. The host pool (swap space and the host
tier of the prefix cache share it: ``core/host_tier.py``) is one tensor
``[num_cpu_blocks, num_tensors, 2, block_size, num_kv_heads, head_dim]``, pinned on CUDA: a host
page holds one block of every layer contiguously, so a block moves in one copy per direction.
Which block moves where is decided by the KV manager in ``core/``; this class only moves bytes.

Copies between device and host (swap-out, write-back, swap-in, load) run on a copy stream of
their own on CUDA, batched per step: the pages are gathered into one device staging tensor and
each run of consecutive host pages moves in one non-blocking copy from or to pinned memory. The
copy stream first waits for the compute stream (a write-back reads KV an earlier forward
wrote); the compute stream waits for the copy stream's events before copy-on-write (whose
target may be a block being written back) and before the forward (which reads loaded blocks).
CPU code that touches host pages (the disk tier) first waits for every queued copy.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from pagedllm.core.kv_cache_spec import KVCacheLayout, build_layout
from pagedllm.loader.attention_layout import layer_windows
from pagedllm.transfer import to_device


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
    """Owns the device KV pool and the host pool of one worker."""

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
        self.is_cuda = device.type == "cuda"
        self.host_pages = torch.zeros(
            (num_cpu_blocks, spec.num_tensors, *shape[:1], *shape[2:]),
            dtype=spec.dtype,
            pin_memory=self.is_cuda and num_cpu_blocks > 0,
        )
        self.copy_stream = torch.cuda.Stream(device) if self.is_cuda else None
        self._last_copy: torch.cuda.Event | None = None
        self.disk = None  # worker/disk_tier.DiskTier, attached by the runner when configured
        # (direction, blocks, start, end) per timed batch of copies; None: not timing
        self._timings: list[tuple[str, int, object, object]] | None = None

    # ------------------------------------------------------------ one step's moves
    def apply_moves(self, output: object) -> None:
        """Carry out a plan's copies in the order ``core/scheduler_output.py`` documents."""
        if self.disk is not None and (output.disk_writes or output.disk_reads):
            self.wait_copies()  # CPU reads and writes host pages: queued copies first
            for page, name in output.disk_writes:
                self.disk.write(name, self.host_pages[page])
            for name, page in output.disk_reads:
                self.disk.read(name, self.host_pages[page])
        self.to_host(list(output.blocks_to_swap_out) + list(output.blocks_to_offload))
        self.copy_blocks(output.blocks_to_copy)
        self.to_device(list(output.blocks_to_swap_in) + list(output.blocks_to_load))
        if self.disk is not None:
            for name in output.disk_deletes:
                self.disk.delete(name)

    def swap_out(self, pairs: Sequence[tuple[int, int]]) -> None:
        """Copy (device block, host page) pairs from the device pool to the host pool."""
        self.to_host(pairs)

    def swap_in(self, pairs: Sequence[tuple[int, int]]) -> None:
        """Copy (host page, device block) pairs from the host pool back into the device pool."""
        self.to_device(pairs)

    def to_host(self, pairs: Sequence[tuple[int, int]]) -> None:
        """Device blocks -> host pages, batched (async on the copy stream on CUDA)."""
        if not pairs:
            return
        with self._on_copy_stream(), self._timed("to_host", len(pairs)):
            for chunk in self._chunks(pairs):
                src = to_device([p[0] for p in chunk], torch.long, self.device)
                # [n, tensors, 2, bs, h, d]: every layer of a block contiguous, like a host page
                staging = torch.stack([t[:, src].transpose(0, 1) for t in self.page_tensors], 1)
                for i0, i1, p0 in _runs([p[1] for p in chunk]):
                    self.host_pages[p0 : p0 + i1 - i0].copy_(staging[i0:i1], non_blocking=True)
        self._after_copies()

    def to_device(self, pairs: Sequence[tuple[int, int]]) -> None:
        """Host pages -> device blocks, batched; the forward waits for them (CUDA event)."""
        if not pairs:
            return
        with self._on_copy_stream(), self._timed("to_device", len(pairs)):
            for chunk in self._chunks(pairs):
                staging = torch.empty(
                    (len(chunk), *self.host_pages.shape[1:]),
                    dtype=self.spec.dtype,
                    device=self.device,
                )
                for i0, i1, p0 in _runs([p[0] for p in chunk]):
                    staging[i0:i1].copy_(self.host_pages[p0 : p0 + i1 - i0], non_blocking=True)
                dst = to_device([p[1] for p in chunk], torch.long, self.device)
                for j, tensor in enumerate(self.page_tensors):
                    tensor[:, dst] = staging[:, j].transpose(0, 1)
        self._after_copies()

    def _chunks(self, pairs: Sequence[tuple[int, int]]) -> list[Sequence[tuple[int, int]]]:
        """``pairs`` in batches whose device staging stays under ``STAGING_BYTES``: the pool
        was sized from free memory, so a swap-in or a load of thousands of blocks must not
        allocate a staging copy of its whole size."""
        step = max(1, STAGING_BYTES // self.spec.bytes_per_block)
        return [pairs[k : k + step] for k in range(0, len(pairs), step)]

    def enable_copy_timing(self) -> None:
        """Time every batch of device <-> host copies from now on (benchmarks: the achieved
        load bandwidth inside the engine). CUDA events on the copy stream, no host sync."""
        self._timings = []

    def copy_timings(self) -> dict[str, dict[str, float]]:
        """Per direction (``to_host``, ``to_device``): blocks, bytes, seconds, GB/s of the
        timed copies; waits for them. Empty when timing is off."""
        out: dict[str, dict[str, float]] = {}
        self.wait_copies()
        for kind, n, start, end in self._timings or []:
            if self.is_cuda:
                end.synchronize()
                seconds = start.elapsed_time(end) / 1e3
            else:
                seconds = end - start
            row = out.setdefault(kind, {"blocks": 0, "bytes": 0, "seconds": 0.0})
            row["blocks"] += n
            row["bytes"] += n * self.spec.bytes_per_block
            row["seconds"] += seconds
        for row in out.values():
            row["GBps"] = row["bytes"] / max(row["seconds"], 1e-12) / 1e9
        return out

    @contextlib.contextmanager
    def _timed(self, kind: str, n: int):  # noqa: ANN202 - a context manager
        timings = self._timings
        if timings is None:
            yield
            return
        if self.is_cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(self.copy_stream)
            yield
            end.record(self.copy_stream)
            timings.append((kind, n, start, end))
        else:
            t0 = time.perf_counter()
            yield
            timings.append((kind, n, t0, time.perf_counter()))

    def wait_copies(self) -> None:
        """Block the host until every queued device<->host copy has run."""
        if self._last_copy is not None:
            self._last_copy.synchronize()
            self._last_copy = None

    def _on_copy_stream(self):  # noqa: ANN202 - a context manager
        if self.copy_stream is None:
            return _NullContext()
        # a write-back reads KV that forwards queued on the compute stream write
        self.copy_stream.wait_stream(torch.cuda.current_stream(self.device))
        return torch.cuda.stream(self.copy_stream)

    def _after_copies(self) -> None:
        """The compute stream waits for the copies queued so far (not the host)."""
        if self.copy_stream is None:
            return
        event = torch.cuda.Event()
        event.record(self.copy_stream)
        torch.cuda.current_stream(self.device).wait_event(event)
        self._last_copy = event

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
        if self.is_cuda:
            torch.cuda.synchronize(self.device)

    def copy_blocks(self, pairs: Sequence[tuple[int, int]]) -> None:
        """Copy-on-write: duplicate (src, dst) device blocks in every layer."""
        if not pairs:
            return
        src = torch.tensor([p[0] for p in pairs], dtype=torch.long, device=self.device)
        dst = torch.tensor([p[1] for p in pairs], dtype=torch.long, device=self.device)
        for cache in self.page_tensors:
            cache[:, dst] = cache[:, src]


# most device memory one batch of host <-> device copies stages at once (``_chunks``)
STAGING_BYTES = 256 << 20


class _NullContext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _runs(pages: Sequence[int]) -> list[tuple[int, int, int]]:
    """``(i0, i1, first page)`` of every run of consecutive pages in ``pages``."""
    out = []
    i0 = 0
    for i in range(1, len(pages) + 1):
        if i == len(pages) or pages[i] != pages[i - 1] + 1:
            out.append((i0, i, pages[i0]))
            i0 = i
    return out


def kv_cache_layout(hf_config: dict, disable_hybrid: bool = False) -> KVCacheLayout:
    """The KV cache groups of a model (by its per-layer sliding windows)."""
    return build_layout(layer_windows(hf_config), disable_hybrid)
