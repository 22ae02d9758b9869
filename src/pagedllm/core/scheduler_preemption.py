"""The scheduler's preemption and swap-in: taking a running request's pages back when the pool
runs dry (swap them to the host pool, or free them and recompute later) and resuming swapped
requests first-come first-served. A mixin of ``Scheduler`` (``core/scheduler.py``), which owns
the queues, the KV manager and the step being built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pagedllm.config import PreemptionMode
from pagedllm.core.request import Request, RequestStatus

if TYPE_CHECKING:
    from pagedllm.core.scheduler import _Step


class PreemptionMixin:
    """``_preempt``, ``_should_swap`` and ``_swap_in`` of ``Scheduler``."""

    def _preempt(self, req: Request, step: _Step) -> None:
        """Take a running request's blocks back: swap them out if allowed and room, else free."""
        self.running.remove(req)
        kv = self.kv_manager
        if self._should_swap(req):
            pairs = kv.swap_out(req)
            step.out.blocks_to_swap_out.extend(pairs)
            step.out.swapped_out_ids.append(req.request_id)
            self.num_swap_outs += 1
            self.num_blocks_swapped_out += len(pairs)
            req.status = RequestStatus.SWAPPED
            self.swapped.append(req)
        else:
            # recompute: its prompt is now all_token_ids; it resumes before any newer request
            kv.free(req)
            req.num_computed_tokens = 0
            req.status = RequestStatus.PREEMPTED
            self.waiting.appendleft(req)
        req.num_preemptions += 1
        self.num_preemptions += 1
        step.out.preempted_ids.append(req.request_id)

    def _should_swap(self, req: Request) -> bool:
        """SWAP: whenever the swap space has room; AUTO: also when estimated cheaper."""
        mode = self.config.preemption_mode
        if mode == PreemptionMode.RECOMPUTE or not self.kv_manager.can_swap_out(req):
            return False  # a request larger than the free swap space falls back to recompute
        if mode == PreemptionMode.SWAP:
            return True
        num_blocks = self.kv_manager.num_blocks_of(req.request_id)
        return self.preemption_costs.prefer_swap(num_blocks, req.num_computed_tokens)

    def _swap_in(self, step: _Step) -> None:
        """Resume swapped requests FCFS while their pages fit above the watermark."""
        kv = self.kv_manager
        while self.swapped and step.seqs_left > 0 and step.budget > 0:
            req = self.swapped[0]
            if not kv.can_swap_in(req, reserve_watermark=bool(self.running)):
                return
            self.swapped.popleft()
            pairs = kv.swap_in(req)
            step.out.blocks_to_swap_in.extend(pairs)
            step.out.swapped_in_ids.append(req.request_id)
            self.num_blocks_swapped_in += len(pairs)
            req.status = RequestStatus.RUNNING
            self.running.append(req)
            remaining = req.num_tokens - req.num_computed_tokens
            if remaining == 0 or (
                remaining > step.budget and not self.config.enable_chunked_prefill
            ):
                continue  # a beam waiting for its token, or it runs next step
            n = min(remaining, step.budget)
            if kv.allocate_slots(req, n):
                self._emit(req, n, step)
                step.budget -= n
                step.seqs_left -= 1
