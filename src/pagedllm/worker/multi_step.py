"""Device side of multi-step decoding: feed each step's sampled tokens to the next step.

The scheduler allocated slots for ``num_steps`` tokens per request (``core/multi_step.py``).
Between steps everything stays on the device: the sampled ids become the next input ids,
positions and context lengths grow by one, and the new slots are read from the block tables,
so the host syncs once per round instead of once per token.
"""

from __future__ import annotations

import dataclasses

import torch

from pagedllm.attention.metadata import AttentionMetadata
from pagedllm.core.scheduler_output import SchedulerOutput
from pagedllm.transfer import to_device
from pagedllm.worker.input_batch import ModelInputs


def advance_decode_inputs(
    inputs: ModelInputs, next_ids: torch.Tensor, block_size: int
) -> ModelInputs:
    """The inputs of the next decode step of the same requests (one token each)."""
    positions = inputs.positions + 1
    metadata = _advance(inputs.metadata, positions, block_size)
    groups = inputs.group_metadata
    if groups is not None:  # hybrid KV cache: every group's slots come from its own tables
        groups = [metadata] + [_advance(m, positions, block_size) for m in groups[1:]]
    return ModelInputs(next_ids, positions, metadata, inputs.query_start, groups)


def _advance(meta: AttentionMetadata, positions: torch.Tensor, block_size: int):  # noqa: ANN202
    """``meta`` one token further: new slots from the block tables, lengths + 1."""
    cols = torch.div(positions, block_size, rounding_mode="floor")
    blocks = meta.block_tables.gather(1, cols[:, None]).squeeze(1).to(torch.long)
    slots = blocks * block_size + positions % block_size
    seq_lens_cpu = None if meta.seq_lens_cpu is None else [n + 1 for n in meta.seq_lens_cpu]
    return dataclasses.replace(
        meta,
        slot_mapping=slots,
        seq_lens=meta.seq_lens + 1,
        max_seq_len=meta.max_seq_len + 1,
        seq_lens_cpu=seq_lens_cpu,
    )


def inputs_from_prev(
    plan: SchedulerOutput, inputs: ModelInputs, prev_ids: torch.Tensor | None, prev_rows: int
) -> ModelInputs:
    """A continuation's input tokens: row ``prev_row`` of the still-running previous step's
    newest sampled tokens (``prev_ids``, on the device), so no host round trip is needed."""
    if prev_ids is None:
        raise ValueError("a continuation step needs the previous step's PendingStep")
    rows = [s.prev_row for s in plan.scheduled]
    if rows == list(range(prev_rows)):
        inputs.input_ids = prev_ids
    else:
        index = to_device(rows, torch.long, prev_ids.device)
        inputs.input_ids = prev_ids.index_select(0, index)
    return inputs
