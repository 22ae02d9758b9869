"""Turn a SchedulerOutput into the flat tensors of one model step.

The scheduler lists decodes (one token) first, then prefill chunks; the batch keeps that order,
so rows ``query_start_loc[i]:query_start_loc[i+1]`` belong to scheduled request ``i``. Built
from plain Python lists and moved to the device in one copy per tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pagedllm.attention.metadata import AttentionMetadata, build_metadata
from pagedllm.core.scheduler import SchedulerOutput
from pagedllm.transfer import to_device


@dataclass(slots=True)
class ModelInputs:
    """Everything one forward pass needs, plus where each request's rows are."""

    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    metadata: AttentionMetadata
    query_start: list[int]  # row offset of scheduled request i (len = num_scheduled + 1)
    # hybrid KV cache: one metadata per KV cache group (group 0's is `metadata`)
    group_metadata: list[AttentionMetadata] | None = None


def prepare_inputs(output: SchedulerOutput, block_size: int, device: torch.device) -> ModelInputs:
    """Lay the scheduled tokens out as one flat batch (no padding)."""
    input_ids: list[int] = []
    positions: list[int] = []
    query_lens: list[int] = []
    seq_lens: list[int] = []
    block_tables: list[list[int]] = []
    query_start = [0]
    for sched in output.scheduled:
        n = len(sched.token_ids)
        input_ids.extend(sched.token_ids)
        positions.extend(range(sched.start_position, sched.start_position + n))
        query_lens.append(n)
        seq_lens.append(sched.start_position + n)
        block_tables.append(sched.block_table)  # group 0's
        query_start.append(query_start[-1] + n)
    metadata = build_metadata(query_lens, seq_lens, block_tables, block_size, device)
    group_metadata = None
    first = output.scheduled[0] if output.scheduled else None
    if first is not None and first.group_block_tables is not None:
        # the same rows and lengths; each group's own tables (null block in freed slots)
        group_metadata = [metadata]
        for g in range(1, len(first.group_block_tables)):
            tables = [s.group_block_tables[g] for s in output.scheduled]
            group_metadata.append(build_metadata(query_lens, seq_lens, tables, block_size, device))
    return ModelInputs(
        input_ids=to_device(input_ids, torch.long, device),
        positions=to_device(positions, torch.long, device),
        metadata=metadata,
        query_start=query_start,
        group_metadata=group_metadata,
    )
