"""What the scheduler hands the model runner each step: plain data, no behaviour.

The scheduler's plan is everything a step needs: rows, forks, cache moves and the requests the
rows belong to. The runner applies, in this order: ``disk_writes`` (host pages spilled to files);
``blocks_to_swap_out`` and ``blocks_to_offload`` (device -> host) and ``disk_reads`` (files ->
host pages; never a page the step writes back into, so either order); ``blocks_to_copy``;
``blocks_to_swap_in`` and ``blocks_to_load`` (host -> device); ``disk_deletes``; then the
forward over ``scheduled`` (decodes first). The KV manager
relies on that order: a device block is written back before anything overwrites it, a host page
is spilled before it is reused, and a hit is loaded before the forward reads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from pagedllm.core.request import Request


@dataclass(slots=True)
class ScheduledRequest:
    """What one request computes this step."""

    request_id: str
    token_ids: list[int]  # the tokens computed this step (len = num_new_tokens)
    start_position: int  # == request.num_computed_tokens before this step
    # the request's whole block table after allocation (group 0's snapshot tuple for hybrid)
    block_table: Sequence[int]
    sample: bool  # True when this step reaches the end of the known tokens
    prompt_logprobs: bool = False  # the request wants logprobs of its prompt tokens
    num_lookahead: int = 0  # multi-step: slots allocated for this many tokens not sampled yet
    # async scheduling: the input token is the one sampled for row `prev_row` of the previous,
    # still running round (token_ids holds a placeholder); None: token_ids are the inputs
    prev_row: int | None = None
    # samples 1..n-1 of an n > 1 request, forked off this row when its prompt completes: each
    # samples its first token from this row's logits (a row of its own in the step's tokens)
    fork_ids: list[str] = field(default_factory=list)
    # hybrid KV cache: every group's table (group 0's is `block_table`); None with one group.
    # Snapshots (``GroupTable.ids()``): the same tuple object while a table does not change
    group_block_tables: list[tuple[int, ...]] | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


@dataclass(slots=True)
class SchedulerOutput:
    """One step's plan, as plain data for the model runner."""

    scheduled: list[ScheduledRequest] = field(default_factory=list)  # decodes first
    num_batched_tokens: int = 0
    blocks_to_copy: list[tuple[int, int]] = field(default_factory=list)  # (src, dst)
    blocks_to_swap_in: list[tuple[int, int]] = field(default_factory=list)  # (cpu, device)
    blocks_to_swap_out: list[tuple[int, int]] = field(default_factory=list)  # (device, cpu)
    # lower tiers of the prefix cache (core/kv_tiers.py)
    blocks_to_offload: list[tuple[int, int]] = field(default_factory=list)  # (device, host)
    blocks_to_load: list[tuple[int, int]] = field(default_factory=list)  # (host, device)
    disk_writes: list[tuple[int, str]] = field(default_factory=list)  # (host page, entry name)
    disk_reads: list[tuple[str, int]] = field(default_factory=list)  # (entry name, host page)
    disk_deletes: list[str] = field(default_factory=list)  # entry names
    preempted_ids: list[str] = field(default_factory=list)
    finished_ids: list[str] = field(default_factory=list)  # since the last step, aborts incl.
    num_decodes: int = 0  # the first num_decodes entries of `scheduled` are 1-token decodes
    num_steps: int = 1  # > 1: every request is a decode, run that many steps back to back
    # the Request of every scheduled row and fork child (rank 0 reads sampling parameters and
    # histories from them; tensor-parallel workers get the plan without them)
    requests: dict[str, Request] = field(default_factory=dict)

    @property
    def is_empty(self) -> bool:
        """Nothing to run and no page to move (a plan with moves only must still be executed:
        e.g. a waiting beam swapped out to make room, and the write-backs it caused)."""
        return not (
            self.scheduled or self.blocks_to_copy or self.blocks_to_swap_in
            or self.blocks_to_swap_out or self.blocks_to_offload or self.blocks_to_load
            or self.disk_writes or self.disk_reads or self.disk_deletes
        )  # fmt: skip

    # requests whose pages this step's swap copies move: if the step fails, they fail with it
    swapped_in_ids: list[str] = field(default_factory=list)
    swapped_out_ids: list[str] = field(default_factory=list)
    # which plan this is: the scheduler keeps the prefix-cache registrations of each plan until
    # its results arrive (update_from_output) or it fails (discard_failed_step)
    step_id: int = 0
