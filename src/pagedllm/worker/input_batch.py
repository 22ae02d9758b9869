"""Turn a SchedulerOutput into the flat tensors of one model step.

The scheduler lists decodes (one token) first, then prefill chunks; the batch keeps that order,
so rows ``query_start_loc[i]:query_start_loc[i+1]`` belong to scheduled request ``i``. Built
from plain Python lists and moved to the device in one copy per tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pagedllm.attention.metadata import AttentionMetadata, build_group_metadata, build_metadata
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


class GroupTableRows:
    """Every group's block-table row of each request as one numpy array, reused while the
    scheduler hands over the same (or equal) table snapshots (``GroupTable.ids()``).

    A hybrid model's decode step carries ``groups x requests`` tables of a few hundred ids;
    turning them into numpy every step cost ~25 ms of host time at 7 groups x 256 requests x
    8k tokens, more than the step's device work. A table changes about once per
    ``block_size`` steps, so most rows are reused. Rows of requests not in the step are
    dropped (the next conversion is cheap and nothing leaks).
    """

    def __init__(self) -> None:
        self._rows: dict[str, tuple[Sequence[Sequence[int]], np.ndarray]] = {}

    def tables(self, output: SchedulerOutput) -> np.ndarray:
        """``[groups, num_scheduled, max_blocks]`` int32, padded with 0 (never read)."""
        old, new = self._rows, {}
        rows = []
        for sched in output.scheduled:
            tables = sched.group_block_tables
            hit = old.get(sched.request_id)
            # list equality checks identity first (C speed): unchanged snapshots cost nothing
            if hit is not None and hit[0] == tables:
                row = hit[1]
            else:
                row = np.zeros((len(tables), max(len(t) for t in tables)), dtype=np.int32)
                for g, table in enumerate(tables):
                    row[g, : len(table)] = table
            new[sched.request_id] = (tables, row)
            rows.append(row)
        self._rows = new
        num_groups = len(output.scheduled[0].group_block_tables)
        width = max(r.shape[1] for r in rows)
        out = np.zeros((num_groups, len(rows), width), dtype=np.int32)
        for i, row in enumerate(rows):
            out[:, i, : row.shape[1]] = row
        return out


def prepare_inputs(
    output: SchedulerOutput,
    block_size: int,
    device: torch.device,
    group_rows: GroupTableRows | None = None,
) -> ModelInputs:
    """Lay the scheduled tokens out as one flat batch (no padding).

    ``group_rows`` (the runner's) keeps hybrid models' table rows between steps."""
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
        block_tables.append(sched.block_table)  # group 0's (unused with several groups)
        query_start.append(query_start[-1] + n)
    group_metadata = None
    first = output.scheduled[0] if output.scheduled else None
    if first is not None and first.group_block_tables is not None:
        # the same rows and lengths; each group's own tables (null block in freed slots)
        rows = GroupTableRows() if group_rows is None else group_rows
        tables = rows.tables(output)
        group_metadata = build_group_metadata(query_lens, seq_lens, tables, block_size, device)
        metadata = group_metadata[0]
    else:
        metadata = build_metadata(query_lens, seq_lens, block_tables, block_size, device)
    return ModelInputs(
        input_ids=to_device(input_ids, torch.long, device),
        positions=to_device(positions, torch.long, device),
        metadata=metadata,
        query_start=query_start,
        group_metadata=group_metadata,
    )
