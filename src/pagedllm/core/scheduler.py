"""Iteration-level continuous batching under a token budget, with chunked prefill and preemption.

Pure Python (no torch). There is no prefill phase or decode phase: each step every scheduled
request computes some of its not-yet-computed tokens (a whole prompt, a chunk, or one decode
token), and samples a token when the step reaches the end of its known tokens.

One step (``schedule``):

1. Plan the token budget: running requests' decodes first (admission order), then prefill chunks
   of running requests that are still prefilling.
2. Allocate the planned slots in admission order. When the pool is dry, preempt the most
   recently admitted running request that has not been allocated this step (itself, at worst).
   So requests allocated this step are never preempted, and the oldest always progresses.
   The victim is swapped out to CPU pages (mode SWAP; AUTO only when ``core/preemption.py``
   estimates it cheaper) if the swap space has room for all its blocks, else freed (recompute).
3. If nothing was preempted: swap in swapped requests (FCFS), then admit waiting ones (FCFS,
   stopping at the first that does not fit, so none is overtaken and starved).

The runner applies the plan's copies in the order ``core/scheduler_output.py`` documents
(write-backs and swap-outs first, loads and swap-ins last), then runs the forward.

A plan's prefix-cache registrations stay provisional until its results come back: the engine
passes a successful plan to ``update_from_output`` and a failed one to ``discard_failed_step``,
which makes the blocks it registered unfindable again (their KV was never written).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from pagedllm.config import CacheConfig, SchedulerConfig
from pagedllm.core.continuation import plan_continuation
from pagedllm.core.kv_cache_manager import KVCacheManager
from pagedllm.core.multi_step import multi_step_count
from pagedllm.core.preemption import PreemptionCosts
from pagedllm.core.request import Request, RequestStatus
from pagedllm.core.scheduler_output import ScheduledRequest, SchedulerOutput
from pagedllm.core.scheduler_preemption import PreemptionMixin
from pagedllm.core.seq_groups import SeqCount, SequenceGroups, tokens_of

__all__ = ["ScheduledRequest", "Scheduler", "SchedulerOutput"]


class Scheduler(SequenceGroups, PreemptionMixin):
    """Decides what runs each step and owns every request's status."""

    def __init__(
        self,
        scheduler_config: SchedulerConfig,
        cache_config: CacheConfig,
        num_gpu_blocks: int,
        num_cpu_blocks: int = 0,
        kv_cache_groups: list[int | None] | None = None,
        num_disk_blocks: int = 0,
    ) -> None:
        """Validate the configs and build the KV cache manager (``kv_cache_groups``: the
        sliding window of each KV cache group, None = full; default one full group).

        The host tier is on when ``cache_config.cpu_cache_memory`` > 0 (the CPU pages are then
        shared with swap); ``num_disk_blocks`` > 0 adds a disk tier of that many entries."""
        scheduler_config.validate()
        cache_config.validate()
        self.config = scheduler_config
        self.cache_config = cache_config
        self.kv_manager = KVCacheManager(
            num_gpu_blocks,
            cache_config.block_size,
            enable_prefix_caching=cache_config.enable_prefix_caching,
            watermark=cache_config.watermark,
            num_cpu_blocks=num_cpu_blocks,
            group_windows=kv_cache_groups,
            host_tier=cache_config.cpu_cache_memory > 0,
            disk_capacity=num_disk_blocks,
        )
        self.block_size = cache_config.block_size
        self.requests: dict[str, Request] = {}  # every unfinished request
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # admission order: the last is the newest
        self.swapped: deque[Request] = deque()
        self.num_preemptions = 0  # swap-outs included
        self.num_swap_outs = 0  # preemptions by swap; the rest recomputed
        self.num_blocks_swapped_out = 0
        self.num_blocks_swapped_in = 0
        # AUTO's inputs: the engine fills the bandwidth, observe_step the prefill rate
        self.preemption_costs = PreemptionCosts()
        self._step_started: float | None = None
        self._finished_ids: list[str] = []
        # samples 1..n-1 of an n > 1 request, until its prompt completes and they fork
        self._unforked: dict[str, list[Request]] = {}
        self._next_step_id = 1
        # step_id -> the prefix-cache registrations made by that plan, until it succeeds or fails
        self._provisional: dict[int, list] = {}

    # ---------------------------------------------------------------- queries
    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_swapped(self) -> int:
        return len(self.swapped)

    def has_unfinished_requests(self) -> bool:
        """True while any request is waiting, running or swapped."""
        return bool(self.requests)

    def get_request(self, request_id: str) -> Request:
        """The unfinished request with this id (KeyError if unknown or finished)."""
        return self.requests[request_id]

    # ---------------------------------------------------------------- intake
    def add_request(self, request: Request, forks: Sequence[Request] = ()) -> None:
        """Queue a new request (FCFS). ValueError: duplicate id, or it could never fit.

        ``forks`` (samples 1..n-1 of an n > 1 request) fork off ``request`` in the step that
        completes its prompt: that step's plan lists them in the row's ``fork_ids``, they sample
        their first token from the row's logits, and ``update_from_output`` forks them.
        """
        if request.request_id in self.requests:
            raise ValueError(f"request id {request.request_id!r} is already in use")
        width = max(request.group_width, 1 + len(forks))
        if width > self.config.max_num_seqs:
            raise ValueError(
                f"request {request.request_id!r} needs {width} sequences (n or beam width) but "
                f"max_num_seqs is {self.config.max_num_seqs}: lower n or raise max_num_seqs"
            )
        self._check_fits(request)
        request.group_width = width
        request.status = RequestStatus.WAITING
        self.requests[request.request_id] = request
        self.waiting.append(request)
        if forks:
            self._unforked[request.request_id] = list(forks)

    def _check_fits(self, request: Request) -> None:
        """Reject a request that no amount of waiting would let run."""
        max_len = self.config.max_model_len
        if request.num_tokens == 0:
            raise ValueError(f"request {request.request_id!r} has an empty prompt")
        if request.num_tokens > max_len:
            raise ValueError(
                f"request {request.request_id!r} has {request.num_tokens} prompt tokens, more "
                f"than max_model_len={max_len}: shorten the prompt or raise max_model_len"
            )
        total = min(request.num_tokens + request.max_tokens, max_len)
        # window groups hold only their window plus the step's chunk
        chunk = self.config.max_num_batched_tokens if self.config.enable_chunked_prefill else total
        need = self.kv_manager.max_blocks_needed(total, chunk)
        if need > self.kv_manager.num_blocks:
            raise ValueError(
                f"request {request.request_id!r} needs up to {need} KV blocks "
                f"({total} tokens, block_size {self.block_size}) but the pool has only "
                f"{self.kv_manager.num_blocks}: lower max_tokens, shorten the prompt, or give "
                "the KV cache more memory"
            )

    # ------------------------------------------------------------- finishing
    def finish_requests(self, request_ids: str | Iterable[str], status: RequestStatus) -> None:
        """Finish requests wherever they are (abort, stop string); unknown ids are ignored."""
        if not RequestStatus(status).finished:
            raise ValueError(f"finish_requests needs a finished status, got {status!r}")
        if isinstance(request_ids, str):
            request_ids = [request_ids]
        for request_id in request_ids:
            request = self.requests.get(request_id)
            if request is None:
                continue
            if request.status == RequestStatus.RUNNING:
                self.running.remove(request)
            elif request.status == RequestStatus.SWAPPED:
                self.swapped.remove(request)
            else:
                self.waiting.remove(request)
            self._finish(request, status)

    def abort_request(self, request_id: str) -> bool:
        """Abort a request in any state; returns False (and does nothing) for an unknown id."""
        if request_id not in self.requests:
            return False
        self.finish_requests([request_id], RequestStatus.FINISHED_ABORTED)
        return True

    def _finish(self, request: Request, status: RequestStatus) -> None:
        """Mark finished, give back its blocks; the caller removed it from its queue."""
        request.status = status
        request.finished_time = time.monotonic()
        self.kv_manager.free(request)
        for child in self._unforked.pop(request.request_id, ()):
            child.status = status  # never forked: they end with their parent
        del self.requests[request.request_id]
        self._finished_ids.append(request.request_id)

    # -------------------------------------------------------------- stepping
    def schedule(self) -> SchedulerOutput:
        """Decide this step's work (see the module docstring for the order of decisions)."""
        out = SchedulerOutput(finished_ids=self._finished_ids)
        self._finished_ids = []
        step = _Step(self.config.max_num_batched_tokens, self.config.max_num_seqs, out)
        out.num_steps = multi_step_count(
            self.config, self.running, len(self.waiting), len(self.swapped), self.kv_manager
        )
        self._allocate_running(self._plan_running(step), step, lookahead=out.num_steps - 1)
        if out.num_steps > 1 and (out.preempted_ids or len(step.decodes) != len(self.running)):
            out.num_steps = 1  # a preemption changed the batch: the slots ahead are harmless
            for scheduled in step.decodes:
                scheduled.num_lookahead = 0
        if not out.preempted_ids:
            # admitting right after a preemption would only thrash
            self._swap_in(step)
            self._admit_waiting(step)
        if not step.decodes and not step.prefills and (self.waiting or self.swapped):
            self._release_held(step)
        out.blocks_to_copy = self.kv_manager.take_blocks_to_copy()
        self._track_registrations(out)
        out.num_decodes = len(step.decodes)
        out.scheduled = step.decodes + step.prefills
        out.num_batched_tokens = sum(len(s.token_ids) for s in out.scheduled)
        self._step_started = time.perf_counter()  # execution time feeds AUTO's prefill rate
        return out

    def schedule_continuation(self, prev: SchedulerOutput) -> SchedulerOutput | None:
        """The decode round after the still-running ``prev`` (async scheduling), or ``None``.

        Call it before ``update_from_output(prev)``; see ``core/continuation.py``. On ``None``
        apply ``prev``'s results and call ``schedule()``.
        """
        queued = len(self.waiting) + len(self.swapped)
        out = plan_continuation(
            self.config, prev, self.requests, self.running, self.kv_manager, queued
        )
        if out is not None:
            out.finished_ids, self._finished_ids = self._finished_ids, []
            self._track_registrations(out)
        return out

    def _release_held(self, step: _Step) -> None:
        """Nothing could run, and requests wait: if a running beam is only holding pages while
        it waits for its siblings' reports, preempt it so they can come in (its report is
        kept), then try again. Without this, held beams and queued siblings deadlock."""
        held = [r for r in self.running if r.num_computed_tokens == r.num_tokens]
        # not after a swap-in this step: a swap-out now could take the CPU pages it freed, and
        # the runner copies every swap-out before any swap-in
        if held and not step.out.blocks_to_swap_in:
            victim = held[-1]
            self._preempt(victim, step)
            if victim.status == RequestStatus.PREEMPTED:
                # behind the requests it waits for, or it would be re-admitted at once
                self.waiting.remove(victim)
                self.waiting.append(victim)
            self._swap_in(step)
            self._admit_waiting(step)

    def _track_registrations(self, out: SchedulerOutput) -> None:
        """Number the plan and keep the prefix-cache registrations it made until it ends."""
        out.step_id, self._next_step_id = self._next_step_id, self._next_step_id + 1
        kv = self.kv_manager
        moves = kv.take_tier_moves()
        out.blocks_to_offload, out.blocks_to_load = moves.offload, moves.load
        out.disk_writes, out.disk_reads = moves.disk_write, moves.disk_read
        out.disk_deletes = moves.disk_delete
        registered, written = kv.take_newly_cached(), kv.take_tier_written()
        if registered or written:
            self._provisional[out.step_id] = (registered, written)

    def discard_failed_step(self, output: SchedulerOutput) -> None:
        """A plan's step failed: the blocks it registered in the prefix cache become unfindable.

        Call it before failing the step's requests (``finish_requests``), for the failed plan
        and for any plan queued behind it (a continuation reads the failed step's tokens).
        """
        registered, written = self._provisional.pop(output.step_id, ([], []))
        self.kv_manager.uncache(registered)
        self.kv_manager.discard_tier_written(written)

    def _plan_running(self, step: _Step) -> dict[str, int]:
        """Token counts for running requests: decodes first, then prefill chunks."""
        plan: dict[str, int] = {}
        for req in self.running:
            if step.budget == 0 or step.seqs_left == 0:
                return plan
            if req.num_tokens - req.num_computed_tokens == 1:
                plan[req.request_id] = 1
                step.budget -= 1
                step.seqs_left -= 1
        chunked = self.config.enable_chunked_prefill
        for req in self.running:
            if step.budget == 0 or step.seqs_left == 0:
                break
            remaining = req.num_tokens - req.num_computed_tokens
            if remaining <= 1 or (remaining > step.budget and not chunked):
                continue  # a decode (planned above), or a beam waiting for its token
            n = min(remaining, step.budget)
            plan[req.request_id] = n
            step.budget -= n
            step.seqs_left -= 1
        return plan

    def _allocate_running(self, plan: dict[str, int], step: _Step, lookahead: int = 0) -> None:
        """Allocate planned slots in admission order, preempting the newest when blocks run out.

        Everything after index ``i`` is not yet allocated this step, so the last running
        request is always a legal victim; at worst it is the request itself.
        """
        kv = self.kv_manager
        i = 0
        while i < len(self.running):
            req = self.running[i]
            n = plan.get(req.request_id)
            if n is None:
                i += 1
                continue
            while not kv.allocate_slots(req, n, num_lookahead_tokens=lookahead):
                victim = self.running[-1]
                self._preempt(victim, step)
                if victim is req:
                    break
            else:
                self._emit(req, n, step).num_lookahead = lookahead
                i += 1

    def _admit_waiting(self, step: _Step) -> None:
        """Admit waiting requests FCFS, with their prefix-cache hits, above the watermark."""
        kv = self.kv_manager
        seqs = SeqCount(self.running)
        while self.waiting and step.seqs_left > 0 and step.budget > 0:
            req = self.waiting[0]
            if self.running and seqs.total_with(req) > self.config.max_num_seqs:
                return  # its forks or beams would overrun max_num_seqs
            hits, num_hit = kv.get_computed_blocks(req)
            n = req.num_tokens - num_hit
            if n > step.budget:
                if not self.config.enable_chunked_prefill:
                    return
                n = step.budget
            # an idle pool admits without the watermark, so a huge request can always start
            if not kv.allocate_slots(req, n, hits, reserve_watermark=bool(self.running)):
                return
            self.waiting.popleft()
            req.num_computed_tokens = num_hit
            if req.num_preemptions == 0:
                req.num_cached_tokens = num_hit
            req.status = RequestStatus.RUNNING
            self.running.append(req)
            seqs.add(req)
            self._emit(req, n, step)
            step.budget -= n
            step.seqs_left -= 1

    def _emit(self, req: Request, n: int, step: _Step) -> ScheduledRequest:
        """Record that ``req`` computes its next ``n`` tokens this step (slots allocated)."""
        start = req.num_computed_tokens
        sample = start + n == req.num_tokens
        groups = self.kv_manager.group_block_tables(req.request_id)
        scheduled = ScheduledRequest(
            req.request_id,
            req.all_token_ids[start : start + n],
            start,
            # hybrid: group 0's snapshot, not one more copy (the runner reads the groups')
            groups[0] if groups else self.kv_manager.get_block_table(req.request_id),
            sample,
            req.sampling_params.prompt_logprobs is not None,
            group_block_tables=groups,
        )
        step.out.requests[req.request_id] = req
        if sample and req.request_id in self._unforked:
            for child in self._unforked[req.request_id]:
                scheduled.fork_ids.append(child.request_id)
                step.out.requests[child.request_id] = child
        if n == 1 and start > 0 and sample:
            step.decodes.append(scheduled)
        else:
            step.prefills.append(scheduled)
        if req.first_scheduled_time is None:
            req.first_scheduled_time = time.monotonic()
        return scheduled

    def update_from_output(
        self, output: SchedulerOutput, tokens: Mapping[str, Sequence[int]]
    ) -> list[Request]:
        """Apply a step's results; returns the requests that got a token or finished.

        ``tokens`` maps each sampled row (fork children included) to its ``num_steps`` tokens.
        Advances ``num_computed_tokens`` of every scheduled request, forks the row's
        ``fork_ids`` (each with its own first token), appends the sampled tokens of rows whose
        ``sample`` was True (a beam's token comes later, from ``append_token``), applies
        ``Request.check_token_stop`` and frees finished requests. Results of requests aborted
        since ``schedule`` are ignored; a missing token for a live sampling row raises
        ValueError.
        """
        self._provisional.pop(output.step_id, None)  # its KV is written: registrations stand
        if self._step_started is not None:
            seconds, self._step_started = time.perf_counter() - self._step_started, None
            prefill = output.num_batched_tokens - output.num_decodes
            self.preemption_costs.observe_step(prefill, output.num_batched_tokens, seconds)
        changed: list[Request] = []
        running = RequestStatus.RUNNING
        for sr in output.scheduled:
            req = self.requests.get(sr.request_id)
            if req is None or req.status != running or req.num_computed_tokens != sr.start_position:
                continue  # aborted (or replaced) since schedule(): drop its result
            req.num_computed_tokens += len(sr.token_ids)
            if not sr.sample:
                continue
            if sr.fork_ids:
                changed.extend(self._fork_children(req, tokens_of(tokens, sr.fork_ids)))
            if req.num_beam_candidates:
                changed.append(req)  # its candidates go to the engine's beam search
                continue
            for j, token in enumerate(tokens_of(tokens, [sr.request_id])[0]):
                if j:  # multi-step: the previous sampled token was computed by the next step
                    req.num_computed_tokens += 1
                req.append_output_token(token)
                if req.first_token_time is None:
                    req.first_token_time = time.monotonic()
                if self._stop_if_done(req):
                    break  # tokens sampled after a stop are dropped
            changed.append(req)
        self.running = [r for r in self.running if r.status == running]
        return changed

    def _stop_if_done(self, req: Request) -> bool:
        """Finish ``req`` (not yet removed from its queue) if its last token stops it."""
        status = req.check_token_stop(self.config.max_model_len)
        if status is not None:
            self._finish(req, status)
        return status is not None


@dataclass(slots=True)
class _Step:
    """Budgets and results of the step being scheduled."""

    budget: int  # tokens left
    seqs_left: int
    out: SchedulerOutput
    decodes: list[ScheduledRequest] = field(default_factory=list)
    prefills: list[ScheduledRequest] = field(default_factory=list)
