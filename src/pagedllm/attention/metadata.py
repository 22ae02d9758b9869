"""Attention metadata for one flat batch, and the forward context that carries it.

The model's forward is ``(input_ids, positions)``; attention layers read the batch layout and
the KV pages from the forward context set by the model runner. That keeps model code free of
requests and keeps CUDA graph capture simple (the tensors below are static buffers there).

Batch layout: the scheduled requests are laid out one after another, **decode requests
(query length 1) first**, then prefill chunks. Request ``i`` owns query rows
``query_start_loc[i]:query_start_loc[i+1]``; its queries sit at the last ``query_len`` positions
of a context of ``seq_lens[i]`` tokens (so the first ``seq_lens[i] - query_len`` tokens were
computed in earlier steps or found in the prefix cache). Causal masking is by position.

KV layout per layer: one tensor ``[2, num_blocks, block_size, num_kv_heads, head_dim]`` (index 0
is K, 1 is V). Logical token ``t`` of request ``i`` lives in block
``block_tables[i, t // block_size]`` at offset ``t % block_size``; the flat slot of a new token
is ``block * block_size + offset`` (``slot_mapping``; -1 would mean "do not write", used only
for CUDA-graph padding rows).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from pagedllm.transfer import to_device


@dataclass(slots=True)
class AttentionMetadata:
    """Layout of one flat batch for the attention layers (all tensors on the model's device)."""

    slot_mapping: torch.Tensor  # [num_tokens] int64: where each new token's K/V is written
    block_tables: torch.Tensor  # [num_seqs, max_blocks_per_seq] int32, padded with 0
    seq_lens: torch.Tensor  # [num_seqs] int32: context length after this step
    query_start_loc: torch.Tensor  # [num_seqs + 1] int32: cumulative query lengths
    max_query_len: int
    max_seq_len: int
    num_decodes: int  # the first num_decodes sequences have query length 1
    num_decode_tokens: int  # == num_decodes
    block_size: int
    # CPU copies for the torch backend's per-sequence loops (avoid device syncs there)
    seq_lens_cpu: list[int] | None = None
    query_lens_cpu: list[int] | None = None

    @property
    def num_seqs(self) -> int:
        return int(self.seq_lens.shape[0])

    @property
    def num_prefills(self) -> int:
        return self.num_seqs - self.num_decodes


@dataclass(slots=True)
class ForwardContext:
    """What attention layers see during one forward pass."""

    metadata: AttentionMetadata | None  # None during a weights-only profiling pass
    kv_caches: list[torch.Tensor]  # one per layer, see module docstring for the layout
    backend: object  # an AttentionBackend (torch_backend / triton_backend)
    # hybrid KV cache: one metadata per KV cache group (its own block tables and slots) and
    # each layer's group; None when every layer shares ``metadata``
    group_metadata: list[AttentionMetadata] | None = None
    layer_group: list[int] | None = None

    def metadata_for(self, layer_idx: int) -> AttentionMetadata:
        """The metadata of the KV cache group that ``layer_idx`` belongs to."""
        if self.group_metadata is None or self.layer_group is None:
            return self.metadata
        return self.group_metadata[self.layer_group[layer_idx]]


_CONTEXT: ForwardContext | None = None


def get_forward_context() -> ForwardContext:
    """The context of the forward pass in progress; raises outside one."""
    if _CONTEXT is None:
        raise RuntimeError("attention called outside a forward pass: use set_forward_context")
    return _CONTEXT


@contextlib.contextmanager
def set_forward_context(context: ForwardContext) -> Iterator[None]:
    """Install ``context`` for the duration of one model forward."""
    global _CONTEXT
    previous = _CONTEXT
    _CONTEXT = context
    try:
        yield
    finally:
        _CONTEXT = previous


def build_metadata(
    query_lens: list[int],
    seq_lens: list[int],
    block_tables: list[list[int]],
    block_size: int,
    device: torch.device | str = "cpu",
) -> AttentionMetadata:
    """Build the metadata of one flat batch from per-sequence lengths and block tables.

    The caller orders decode sequences (query length 1) first; ``num_decodes`` counts the
    leading sequences with query length 1. Sequence ``i``'s new tokens occupy positions
    ``seq_lens[i] - query_lens[i] .. seq_lens[i] - 1``; their slots follow from its block table.
    The tensors are built on the CPU and moved to ``device`` once each, without waiting
    for the device (``transfer.to_device``).
    """
    if not (len(query_lens) == len(seq_lens) == len(block_tables)):
        raise ValueError("query_lens, seq_lens and block_tables must have one entry per sequence")
    num_seqs = len(query_lens)
    # numpy, not Python loops: with 256 sequences of ~100 blocks this runs every step and was
    # the largest host cost of a GPU decode step (2.8 ms as nested lists -> torch.tensor).
    max_blocks = max((len(t) for t in block_tables), default=0)
    tables = np.zeros((num_seqs, max_blocks), dtype=np.int32)
    for i, table in enumerate(block_tables):
        tables[i, : len(table)] = table
    return build_group_metadata(query_lens, seq_lens, tables[None], block_size, device)[0]


def build_group_metadata(
    query_lens: list[int],
    seq_lens: list[int],
    tables: np.ndarray,
    block_size: int,
    device: torch.device | str = "cpu",
) -> list[AttentionMetadata]:
    """Metadata of one flat batch for each of ``G`` KV cache groups (hybrid KV cache).

    ``tables`` is ``[G, num_seqs, max_blocks]`` int32 (group ``g``'s block tables, padded with
    0). The groups share the rows and lengths (``seq_lens``, ``query_start_loc`` are one
    device tensor each); only the tables and the slots differ. Each goes to the device in one
    copy for all groups.
    """
    num_seqs = len(query_lens)
    if tables.ndim != 3 or tables.shape[1] != num_seqs or len(seq_lens) != num_seqs:
        raise ValueError("tables must be [groups, num_seqs, max_blocks], one row per sequence")
    num_decodes = 0
    while num_decodes < num_seqs and query_lens[num_decodes] == 1:
        num_decodes += 1
    q = np.asarray(query_lens, dtype=np.int64)
    s = np.asarray(seq_lens, dtype=np.int64)
    query_start = np.zeros(num_seqs + 1, dtype=np.int64)
    np.cumsum(q, out=query_start[1:])
    total = int(query_start[-1])
    seq_idx = np.repeat(np.arange(num_seqs), q)
    positions = np.arange(total) - query_start[:-1][seq_idx] + (s - q)[seq_idx]
    # numpy lays a slice-then-advanced-index result out column-major ([G, T] with strides
    # (8, 8G)): made row-major, so each group's slot row is a contiguous tensor (the Triton
    # cache-write kernel reads slot t at base + t)
    slots = np.ascontiguousarray(tables[:, seq_idx, positions // block_size], dtype=np.int64)
    slots *= block_size
    slots += positions % block_size
    slots_dev = to_device(slots, torch.int64, device)
    tables_dev = to_device(tables, torch.int32, device)
    seq_lens_dev = to_device(s, torch.int32, device)
    query_start_dev = to_device(query_start, torch.int32, device)
    return [
        AttentionMetadata(
            slot_mapping=slots_dev[g],
            block_tables=tables_dev[g],
            seq_lens=seq_lens_dev,
            query_start_loc=query_start_dev,
            max_query_len=max(query_lens, default=0),
            max_seq_len=max(seq_lens, default=0),
            num_decodes=num_decodes,
            num_decode_tokens=num_decodes,
            block_size=block_size,
            seq_lens_cpu=list(seq_lens),
            query_lens_cpu=list(query_lens),
        )
        for g in range(tables.shape[0])
    ]
