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
    slot_mapping: torch.Tensor  # [groups, n]: each KV cache group writes its own slots
    block_tables: torch.Tensor  # [groups, n, max_blocks]: each group's own tables
    seq_lens: torch.Tensor
    query_start_loc: torch.Tensor


class CudaGraphRunner:
    """Captures and replays decode forwards of ``model`` for bucketed batch sizes.

    Hybrid KV cache (``num_groups > 1``): every group has its own slot and block-table buffer
    (``[groups, n, ...]``) and the captured forward context gives each layer its group's view
    (``layer_group``), exactly as an eager step's ``ForwardContext`` does. Rows and lengths
    are shared by the groups.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        backend: object,
        kv_caches: list[torch.Tensor],
        max_num_seqs: int,
        max_model_len: int,
        block_size: int,
        device: torch.device,
        layer_group: list[int] | None = None,
        num_groups: int = 1,
    ) -> None:
        if num_groups > 1 and layer_group is None:
            raise ValueError("layer_group is needed with several KV cache groups")
        self.model = model
        self.backend = backend
        self.kv_caches = kv_caches
        self.max_model_len = max_model_len
        self.block_size = block_size
        self.layer_group = layer_group if num_groups > 1 else None
        self.num_groups = num_groups
        self.sizes = capture_sizes(max_num_seqs)
        self.max_blocks = -(-max_model_len // block_size)
        n = self.sizes[-1]
        self.buf = _Buffers(
            input_ids=torch.zeros(n, dtype=torch.long, device=device),
            positions=torch.zeros(n, dtype=torch.long, device=device),
            slot_mapping=torch.full((num_groups, n), -1, dtype=torch.long, device=device),
            block_tables=torch.zeros(
                (num_groups, n, self.max_blocks), dtype=torch.int32, device=device
            ),
            seq_lens=torch.ones(n, dtype=torch.int32, device=device),
            query_start_loc=torch.arange(n + 1, dtype=torch.int32, device=device),
        )
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.pool = None

    def _metadata(self, bs: int, group: int) -> AttentionMetadata:
        b = self.buf
        return AttentionMetadata(
            slot_mapping=b.slot_mapping[group, :bs],
            block_tables=b.block_tables[group, :bs],
            seq_lens=b.seq_lens[:bs],
            query_start_loc=b.query_start_loc[: bs + 1],
            max_query_len=1,
            max_seq_len=self.max_model_len,
            num_decodes=bs,
            num_decode_tokens=bs,
            block_size=self.block_size,
        )

    def context(self, bs: int) -> ForwardContext:
        """The forward context over the static buffers of bucket ``bs`` (what is captured)."""
        metas = [self._metadata(bs, g) for g in range(self.num_groups)]
        groups = metas if self.num_groups > 1 else None
        return ForwardContext(metas[0], self.kv_caches, self.backend, groups, self.layer_group)

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every bucket, largest first so smaller graphs reuse its memory pool."""
        for bs in reversed(self.sizes):
            with set_forward_context(self.context(bs)):
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

    def stage(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        metadata: AttentionMetadata,
        group_metadata: list[AttentionMetadata] | None = None,
    ) -> int:
        """Copy ``n`` decodes' inputs into the static buffers; returns the bucket to replay.

        Rows ``n .. bucket - 1`` become padding: no write (slot -1), one key of block 0
        (``seq_len`` 1; for a hybrid model that is the null block, whose contents no real row
        reads), output dropped.
        """
        n = input_ids.shape[0]
        bs = next(s for s in self.sizes if s >= n)
        metas = group_metadata if group_metadata is not None else [metadata]
        if len(metas) != self.num_groups:
            raise ValueError(f"{len(metas)} KV cache groups given, graphs have {self.num_groups}")
        b = self.buf
        b.input_ids[:n].copy_(input_ids, non_blocking=True)
        b.positions[:n].copy_(positions, non_blocking=True)
        b.slot_mapping[:, n:bs].fill_(-1)
        for g, meta in enumerate(metas):
            width = meta.block_tables.shape[1]
            b.slot_mapping[g, :n].copy_(meta.slot_mapping, non_blocking=True)
            b.block_tables[g, :n, :width].copy_(meta.block_tables, non_blocking=True)
        b.seq_lens[:n].copy_(metadata.seq_lens, non_blocking=True)
        b.seq_lens[n:bs].fill_(1)
        return bs

    def run(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        metadata: AttentionMetadata,
        group_metadata: list[AttentionMetadata] | None = None,
    ) -> torch.Tensor:
        """Replay the smallest graph that fits ``n`` decodes; returns hidden ``[n, hidden]``."""
        bs = self.stage(input_ids, positions, metadata, group_metadata)
        self.graphs[bs].replay()
        return self.outputs[bs][: input_ids.shape[0]]
