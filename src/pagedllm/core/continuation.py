"""Asynchronous scheduling: plan the next decode round before this round's tokens are known.

Without it the device idles while the host turns a round's sampled tokens into request state,
schedules the next round and lays out its inputs. When a round is pure decode of plain-sampling
requests and nothing waits, the next round is predictable: the same requests, each one decode
(or ``num_scheduler_steps``) further on. So the engine schedules that *continuation* right
after launching the round, launches it behind the round on the device (its input tokens are
read on the device from the round's sampled tokens), and only then waits for the round's
results, doing the host work while the continuation runs.

What makes it safe:

- Slots. The continuation's slots are allocated now, as lookahead slots beyond the in-flight
  round's (``allocate_slots(req, 1, num_lookahead_tokens=k_prev + k - 1)`` while the request's
  ``num_computed_tokens`` still predates the round): nothing of the round's is touched.
- Requests that stop during the round. Those that must stop by length are left out. One that
  stops on EOS is computed once more in the continuation and that result is dropped
  (``update_from_output`` ignores requests that are no longer running), costing one wasted row.
- Freed blocks. A request finishing while the continuation is in flight frees its blocks on
  the host; any later use of them is launched after the continuation on the same device stream.
- Anything else (waiting or swapped requests, penalties, logprobs, stop strings, a running
  request that was not in the round, too few free blocks) returns ``None``: the engine then
  waits for the round and schedules normally. Pure Python: part of ``core``.
"""

from __future__ import annotations

from collections.abc import Mapping

from pagedllm.config import SchedulerConfig
from pagedllm.core.kv_cache_manager import KVCacheManager
from pagedllm.core.multi_step import plain_decode_round, plain_sampling
from pagedllm.core.request import Request, RequestStatus
from pagedllm.core.scheduler_output import ScheduledRequest, SchedulerOutput


def plan_continuation(
    config: SchedulerConfig,
    prev: SchedulerOutput,
    requests: Mapping[str, Request],
    running: list[Request],
    kv: KVCacheManager,
    num_queued: int,
) -> SchedulerOutput | None:
    """The decode round that follows the in-flight ``prev``, or ``None`` if not predictable.

    Allocates the slots it needs (never preempts; a copy-on-write of a shared block is not
    counted in advance, as in ``plain_decode_round``). Each scheduled request's ``prev_row`` is its
    row in ``prev``, whose sampled token becomes its input on the device; its ``token_ids``
    hold a placeholder until then. ``num_queued`` counts waiting and swapped requests: they are
    admitted by ordinary scheduling, so any of them stops continuations.
    """
    if num_queued or not prev.scheduled or prev.num_decodes != len(prev.scheduled) or not running:
        return None
    k_prev = prev.num_steps
    rows: list[tuple[int, Request]] = []
    in_prev: set[str] = set()
    for row, sched in enumerate(prev.scheduled):
        req = requests.get(sched.request_id)
        if req is None or req.status != RequestStatus.RUNNING:
            continue  # finished or aborted since prev was scheduled
        if req.num_computed_tokens != sched.start_position or not sched.sample:
            return None  # prev's results were already applied, or it is not a decode
        in_prev.add(req.request_id)
        if req.num_output_tokens + k_prev >= req.max_tokens:
            continue  # stops by length within prev
        if req.num_tokens + k_prev >= config.max_model_len:
            continue
        rows.append((row, req))
    if not rows or any(r.request_id not in in_prev for r in running):
        return None
    if not all(plain_sampling(requests[s.request_id]) for s in prev.scheduled
               if s.request_id in in_prev):  # fmt: skip
        return None
    k = plain_decode_round(config, [req for _, req in rows], kv, in_flight=k_prev)
    if k == 0:
        return None
    out = SchedulerOutput(num_steps=k)
    for row, req in rows:
        if not kv.allocate_slots(req, 1, num_lookahead_tokens=k_prev + k - 1):
            # only an uncounted copy-on-write can get here; the blocks taken so far are
            # lookahead slots their requests will use, and pending copies go with the next step
            return None
        start = req.num_computed_tokens + k_prev
        groups = kv.group_block_tables(req.request_id)
        out.scheduled.append(
            ScheduledRequest(
                req.request_id,
                [0],  # placeholder: the device reads prev's sampled token of row `prev_row`
                start,
                groups[0] if groups else kv.get_block_table(req.request_id),
                sample=True,
                num_lookahead=k - 1,
                prev_row=row,
                group_block_tables=groups,
            )
        )
        out.requests[req.request_id] = req
    out.blocks_to_copy = kv.take_blocks_to_copy()
    out.num_decodes = len(out.scheduled)
    out.num_batched_tokens = out.num_decodes
    return out
