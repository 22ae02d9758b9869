"""CUDA graphs for pure-decode steps: one captured forward per padded batch size.

A decode step of a small model is launch-bound: hundreds of tiny kernels whose launch cost on
the host exceeds their run time. Capturing the forward once per batch-size bucket and replaying
it removes that cost. The graph reads static buffers, so each step copies its inputs into them;
padding rows write nowhere (slot -1) and attend to one token of block 0, and their outputs are
dropped. ``max_seq_len`` is fixed to ``max_model_len`` so the decode kernel's split count is a
constant of the graph.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from pagedllm.attention.metadata import AttentionMetadata, ForwardContext, set_forward_context

logger = logging.getLogger(__name__)


def capture_sizes(max_num_seqs: int) -> list[int]:
    """1, 2, 4, 8, then every multiple of 16 up to max_num_seqs (as vLLM buckets)."""
    sizes = [s for s in (1, 2, 4, 8) if s <= max_num_seqs]
    sizes += list(range(16, max_num_seqs + 1, 16))
    if sizes[-1] != max_num_seqs:
        sizes.append(max_num_seqs)
    return sizes


@dataclass(slots=True)
class _Buffers:
    input_ids: torch.Tensor
    positions: torch.Tensor
    slot_mapping: torch.Tensor
    block_tables: torch.Tensor
    seq_lens: torch.Tensor
    query_start_loc: torch.Tensor
    hidden: torch.Tensor | None = None


class CudaGraphRunner:
    """Captures and replays decode forwards of ``model`` for bucketed batch sizes."""

    def __init__(
        self,
        model: torch.nn.Module,
        backend: object,
        kv_caches: list[torch.Tensor],
        max_num_seqs: int,
        max_model_len: int,
        block_size: int,
        device: torch.device,
    ) -> None:
        self.model = model
        self.backend = backend
        self.kv_caches = kv_caches
        self.max_model_len = max_model_len
        self.block_size = block_size
        self.sizes = capture_sizes(max_num_seqs)
        self.max_blocks = -(-max_model_len // block_size)
        n = self.sizes[-1]
        self.buf = _Buffers(
            input_ids=torch.zeros(n, dtype=torch.long, device=device),
            positions=torch.zeros(n, dtype=torch.long, device=device),
            slot_mapping=torch.full((n,), -1, dtype=torch.long, device=device),
            block_tables=torch.zeros((n, self.max_blocks), dtype=torch.int32, device=device),
            seq_lens=torch.ones(n, dtype=torch.int32, device=device),
            query_start_loc=torch.arange(n + 1, dtype=torch.int32, device=device),
        )
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.pool = None

    def _metadata(self, bs: int) -> AttentionMetadata:
        b = self.buf
        return AttentionMetadata(
            slot_mapping=b.slot_mapping[:bs],
            block_tables=b.block_tables[:bs],
            seq_lens=b.seq_lens[:bs],
            query_start_loc=b.query_start_loc[: bs + 1],
            max_query_len=1,
            max_seq_len=self.max_model_len,
            num_decodes=bs,
            num_decode_tokens=bs,
            block_size=self.block_size,
        )

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every bucket, largest first so smaller graphs reuse its memory pool."""
        for bs in reversed(self.sizes):
            meta = self._metadata(bs)
            ctx = ForwardContext(meta, self.kv_caches, self.backend)
            with set_forward_context(ctx):
                for _ in range(2):  # warm-up: Triton compiles, cuBLAS picks its algorithms
                    self.model(self.buf.input_ids[:bs], self.buf.positions[:bs])
                torch.cuda.synchronize()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self.pool):
                    out = self.model(self.buf.input_ids[:bs], self.buf.positions[:bs])
            if self.pool is None:
                self.pool = graph.pool()
            self.graphs[bs] = graph
            self.outputs[bs] = out
        torch.cuda.synchronize()
        logger.info("captured CUDA graphs for decode batch sizes %s", self.sizes)

    def can_run(self, num_seqs: int, max_seq_len: int) -> bool:
        return num_seqs <= self.sizes[-1] and max_seq_len <= self.max_model_len

    def run(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        metadata: AttentionMetadata,
    ) -> torch.Tensor:
        """Replay the smallest graph that fits ``n`` decodes; returns hidden ``[n, hidden]``."""
        n = input_ids.shape[0]
        bs = next(s for s in self.sizes if s >= n)
        b = self.buf
        b.input_ids[:n].copy_(input_ids, non_blocking=True)
        b.positions[:n].copy_(positions, non_blocking=True)
        b.slot_mapping[:n].copy_(metadata.slot_mapping, non_blocking=True)
        b.slot_mapping[n:bs].fill_(-1)
        width = metadata.block_tables.shape[1]
        b.block_tables[:n, :width].copy_(metadata.block_tables, non_blocking=True)
        b.seq_lens[:n].copy_(metadata.seq_lens, non_blocking=True)
        b.seq_lens[n:bs].fill_(1)
        self.graphs[bs].replay()
        return self.outputs[bs][:n]
