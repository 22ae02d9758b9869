"""The synchronous engine: step() = schedule -> execute -> sample -> update -> outputs.

One ``LLMEngine`` owns one scheduler (which owns the KV manager) and one model runner. Users
reach it through ``LLM`` (offline batches), the CLI, or ``AsyncLLMEngine`` (the HTTP server).
It is not thread-safe: exactly one thread calls its methods.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

from pagedllm.config import EngineConfig, PreemptionMode
from pagedllm.core.request import Request, RequestStatus
from pagedllm.core.scheduler import Scheduler, SchedulerOutput
from pagedllm.engine.beam_group import BeamGroup, start_beam_group
from pagedllm.engine.beam_search import BeamSearchParams
from pagedllm.engine.detokenizer import IncrementalDetokenizer
from pagedllm.engine.errors import RequestFailure
from pagedllm.engine.kv_snapshot import take_kv_snapshot
from pagedllm.engine.outputs import RequestOutput
from pagedllm.engine.request_group import RequestGroup, SampleState, new_request_group
from pagedllm.engine.stats import EngineStats, engine_stats
from pagedllm.engine.validation import (
    check_logit_bias,
    check_params,
    resolve_max_tokens,
    resolve_prompt,
)
from pagedllm.loader import load_model_source
from pagedllm.sampling_params import SamplingParams
from pagedllm.step_result import StepResult
from pagedllm.worker.cache_engine import kv_cache_layout
from pagedllm.worker.disk_tier import open_disk_tier
from pagedllm.worker.executor import create_executor
from pagedllm.worker.pending import PendingStep

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Launched:
    """A step handed to the executor: its plan and the pending result."""

    plan: SchedulerOutput
    pending: PendingStep



class LLMEngine:
    """Continuous-batching inference over a paged KV cache."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config.validate()
        source = load_model_source(
            config.model.model, config.model.load_format, config.model.tokenizer
        )
        self.model_name = source.name
        self.model_config = source.hf_config
        self.tokenizer = source.tokenizer
        self.generation_config = source.generation_config
        model_max = int(source.hf_config.get("max_position_embeddings") or 1 << 30)
        if config.scheduler.max_model_len > model_max:
            logger.info("max_model_len capped at the model's %d positions", model_max)
            config.scheduler.max_model_len = model_max
        self.max_model_len = config.scheduler.max_model_len
        single_device = config.parallel.tensor_parallel_size == 1
        if not single_device and config.scheduler.num_scheduler_steps > 1:
            # TP workers do not see rank 0's sampled tokens (worker/executor.py)
            logger.info("multi-step decoding is not supported with tensor parallelism: off")
            config.scheduler.num_scheduler_steps = 1
        self.runner = create_executor(config, source)  # ModelRunner, or rank 0 of a TP group
        num_blocks, num_cpu_blocks = self.runner.determine_num_blocks()
        self.runner.init_cache(num_blocks, num_cpu_blocks)
        layout = kv_cache_layout(source.hf_config, config.cache.disable_hybrid_kv_cache)
        disk, num_disk_blocks = open_disk_tier(config, self.runner, self.model_name, layout.windows)
        self.scheduler = Scheduler(
            config.scheduler,
            config.cache,
            num_blocks,
            num_cpu_blocks,
            layout.windows,
            num_disk_blocks=num_disk_blocks,
        )
        if disk is not None:  # the disk tier survives restarts: index the valid files
            tiers = self.scheduler.kv_manager.tiers
            for name in tiers.restore_disk(disk.scan(self.runner.kv_spec.bytes_per_block)):
                disk.delete(name)
        if config.scheduler.preemption_mode == PreemptionMode.AUTO and num_cpu_blocks > 0:
            # AUTO's swap-vs-recompute model needs the copy bandwidth (core/preemption.py)
            costs = self.scheduler.preemption_costs
            costs.bytes_per_block = self.runner.kv_spec.bytes_per_block
            costs.swap_bytes_per_s = self.runner.measure_swap_bandwidth()
        self.eos_token_ids = (
            frozenset(self.tokenizer.eos_token_ids) if self.tokenizer else frozenset()
        )
        self._groups: dict[str, RequestGroup | BeamGroup] = {}
        self._group_of: dict[str, RequestGroup | BeamGroup] = {}  # scheduler request id -> group
        self._ids = itertools.count()
        self._pending: list[RequestOutput] = []  # aborted/failed outputs for the next step
        self._in_flight: _Launched | None = None  # a launched continuation (async scheduling)
        async_cfg = config.scheduler.async_scheduling
        # continuations need the previous step's tokens on the device: single device only
        self.async_scheduling = single_device and bool(
            async_cfg or (async_cfg is None and self.runner.device.type == "cuda")
        )
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0

    @classmethod
    def from_config(cls, config: EngineConfig) -> LLMEngine:
        return cls(config)

    # -------------------------------------------------------------- requests
    def add_request(
        self,
        request_id: str,
        prompt: str | list[int] | None,
        params: SamplingParams | BeamSearchParams,
        prompt_token_ids: list[int] | None = None,
        arrival_time: float | None = None,
        stream: bool = True,
        detokenize: bool = True,
    ) -> None:
        """Queue a request. Bad input raises ValueError/TypeError and queues nothing.

        With ``stream=False`` the request yields one output, when it finishes (offline
        batches: no per-step output objects, text decoded once at the end). With
        ``BeamSearchParams`` the request is a beam search (``engine/beam_search.py``): one
        output, when the search ends, with the ``beam_width`` best sequences best first.
        With ``detokenize=False`` (the engine-core process: its front end decodes) outputs carry
        token ids only, unless the request has stop strings, which need the text here.
        """
        if not isinstance(request_id, str) or not request_id:
            raise TypeError(f"request_id must be a non-empty string, got {request_id!r}")
        if request_id in self._groups:
            raise ValueError(f"request id {request_id!r} is already in use; pick a unique id")
        if not isinstance(params, (SamplingParams, BeamSearchParams)):
            raise TypeError(
                f"params must be SamplingParams or BeamSearchParams, got {type(params).__name__}"
            )
        if isinstance(params, SamplingParams):
            check_params(params, self.config.scheduler.max_n)
        text, ids = resolve_prompt(prompt, prompt_token_ids, self.tokenizer, self.vocab_size)
        if isinstance(params, SamplingParams):
            self._check_constraints(params)
        max_tokens = resolve_max_tokens(
            len(ids),
            params.max_tokens,
            self.max_model_len,
            self.config.scheduler.truncate_max_tokens,
        )
        arrival = time.monotonic() if arrival_time is None else arrival_time
        internal = f"{request_id}#{next(self._ids)}"
        if isinstance(params, BeamSearchParams):
            group, first = start_beam_group(
                request_id, internal, text, ids, params, max_tokens, self.eos_token_ids,
                arrival, self._decode,
            )  # fmt: skip
            self.scheduler.add_request(first)  # raises ValueError if it can never fit
            self._groups[request_id] = group
            self._group_of[first.request_id] = group
            self.prompt_tokens_total += len(ids)
            return
        group, requests = new_request_group(
            request_id, internal, text, ids, params, max_tokens, self.eos_token_ids, arrival,
            self._sample_state, stream=stream, detokenize=detokenize or bool(params.stop),
        )  # fmt: skip
        # raises ValueError if it can never fit; samples 1..n-1 fork when the prompt completes
        self.scheduler.add_request(requests[0], forks=requests[1:])
        self._groups[request_id] = group
        for request in requests:
            self._group_of[request.request_id] = group
        self.prompt_tokens_total += len(ids)

    def _check_constraints(self, params: SamplingParams) -> None:
        """logit_bias ids inside the vocabulary; the grammar compiles (cached for the run)."""
        check_logit_bias(params, self.vocab_size)
        self.runner.structured.validate(params.structured_output)

    def abort_request(self, request_ids: str | Iterable[str]) -> None:
        """Stop requests wherever they are; unknown ids are ignored (they may have finished).

        Each aborted request gets a final output (finish_reason "abort") from the next step().
        """
        if isinstance(request_ids, str):
            request_ids = [request_ids]
        for request_id in request_ids:
            group = self._groups.get(request_id)
            if group is not None:
                self._finish_group(group, RequestStatus.FINISHED_ABORTED)

    def has_unfinished_requests(self) -> bool:
        return bool(self._groups) or bool(self._pending) or self._in_flight is not None

    @property
    def vocab_size(self) -> int:
        return self.runner.vocab_size

    # ------------------------------------------------------------------ step
    def step(self) -> list[RequestOutput]:
        """Run one iteration; return one output per user request that changed.

        With async scheduling the iteration launches the next decode round (a continuation,
        ``core/continuation.py``) before it waits for the current one, so the device works
        through the next round while the host turns this one's tokens into outputs.
        """
        outputs, self._pending = self._pending, []
        current, self._in_flight = self._in_flight, None
        if current is None:
            scheduled = self.scheduler.schedule()
            if scheduled.is_empty:
                return outputs
            current = self._launch(scheduled)
            if current is None:
                return outputs + self._take_pending()
        if self.async_scheduling:
            following = self.scheduler.schedule_continuation(current.plan)
            if following is not None:
                self._in_flight = self._launch(following, prev=current)
        return outputs + self._complete(current) + self._take_pending()

    def _launch(self, plan: SchedulerOutput, prev: _Launched | None = None) -> _Launched | None:
        """Queue a step on the executor; on failure its requests fail (outputs in _pending)."""
        try:
            pending = self.runner.launch(plan, None if prev is None else prev.pending)
        except RequestFailure as exc:
            # only these requests are at fault: the others' state did not advance, so the
            # next step schedules them again
            logger.warning("requests %s failed: %s", exc.request_ids, exc)
            self._fail_step(plan, exc.cause, exc.request_ids)
            return None
        except Exception as exc:  # noqa: BLE001 - one bad step must not take the engine down
            logger.exception("model step failed; failing its requests")
            self._fail_step(plan, exc)
            return None
        return _Launched(plan, pending)

    def _complete(self, launched: _Launched) -> list[RequestOutput]:
        """Wait for a launched step's tokens and apply them: request state, text, outputs."""
        plan = launched.plan
        try:
            result = launched.pending.collect()
        except Exception as exc:  # noqa: BLE001 - a device error fails this step's requests
            logger.exception("model step failed; failing its requests")
            self._fail_step(plan, exc)
            return []
        num_before = {rid: r.num_output_tokens for rid, r in plan.requests.items()}
        changed = self.scheduler.update_from_output(plan, result.tokens)
        self._record_prompt_logprobs(result)
        for request in changed:
            if request.num_beam_candidates:
                self._on_beam_report(request, result)
                continue
            new = request.output_token_ids[num_before.get(request.request_id, 0) :]
            self._apply_tokens(request, new, result)
        return self._collect_outputs()

    def _apply_tokens(self, request: Request, tokens: list[int], result: StepResult) -> None:
        """``_on_new_tokens``; a failure there (detokenizing, say) fails only this request."""
        try:
            self._on_new_tokens(request, tokens, result)
        except Exception as exc:  # noqa: BLE001 - one request's host work must not fail others
            logger.exception("output processing failed for %s", request.request_id)
            group = self._group_of.get(request.request_id)
            if group is not None and group.request_id in self._groups:
                message = f"{type(exc).__name__}: {exc}"
                self._finish_group(group, RequestStatus.FINISHED_ERROR, message)

    def _on_beam_report(self, request: Request, result: StepResult) -> None:
        """A beam's candidates; the group's search steps once every live beam reported."""
        group = self._group_of.get(request.request_id)
        if not isinstance(group, BeamGroup) or request.request_id not in result.logprobs:
            return
        if not group.report(request, result.logprobs[request.request_id]):
            return
        ended = group.advance(self.scheduler)
        self.generation_tokens_total += len(group.beams)
        for beam in group.beams:
            self._group_of[beam.request.request_id] = group
        held = sum(self.scheduler.kv_manager.num_blocks_of(i) for i in group.live_request_ids())
        group.peak_blocks = max(group.peak_blocks, held)
        for request_id in ended:
            self.runner.release([request_id])
            self._group_of.pop(request_id, None)

    def _decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids) if self.tokenizer is not None else ""

    def _take_pending(self) -> list[RequestOutput]:
        outputs, self._pending = self._pending, []
        return outputs

    # ------------------------------------------------------------- internals
    def _sample_state(self, request: Request) -> SampleState:
        want_logprobs = request.sampling_params.logprobs is not None
        return SampleState(
            request=request,
            detokenizer=IncrementalDetokenizer(
                self.tokenizer, request.prompt_token_ids, request.sampling_params
            ),
            logprobs=[] if want_logprobs else None,
            cumulative_logprob=0.0 if want_logprobs else None,
        )

    def _record_prompt_logprobs(self, result: StepResult) -> None:
        for request_id, chunk in result.prompt_logprobs.items():
            group = self._group_of.get(request_id)
            if group is not None and group.prompt_logprobs is not None:
                group.prompt_logprobs.extend(chunk)

    def _on_new_tokens(self, request: Request, tokens: list[int], result: StepResult) -> None:
        """Detokenize, check stop strings, record logprobs and finishing.

        ``tokens`` are what the scheduler appended this step (several after a multi-step round;
        those never carry logprobs or stop strings, see ``core/multi_step.py``).
        """
        group = self._group_of.get(request.request_id)
        if not isinstance(group, RequestGroup):
            return
        state = group.state_of(request, self._sample_state)
        group.changed = True
        for token in tokens:
            if request.first_token_time is None:
                request.first_token_time = time.monotonic()
            self.generation_tokens_total += 1
            state.delta_token_ids.append(token)
            if state.logprobs is not None and request.request_id in result.logprobs:
                entry = result.logprobs[request.request_id]
                state.logprobs.append(entry)
                state.delta_logprobs.append(entry)
                state.cumulative_logprob += result.sampled_logprob.get(request.request_id, 0.0)
            if group.detokenize_at_end or not group.detokenize:
                stop_hit = None
            else:
                delta, stop_hit = state.detokenizer.add_tokens([token])
                state.delta_text += delta
            if stop_hit is not None and not request.is_finished:
                request.stop_reason = stop_hit
                self.scheduler.finish_requests([request.request_id], RequestStatus.FINISHED_STOPPED)
                break
        if request.is_finished and state.finish_reason is None:
            if group.detokenize_at_end and group.detokenize and request.output_token_ids:
                state.delta_text += state.detokenizer.add_tokens(request.output_token_ids)[0]
            stopped_by_string = request.status is RequestStatus.FINISHED_STOPPED and (
                request.stop_reason is not None
            )
            if group.detokenize and not stopped_by_string:
                state.delta_text += state.detokenizer.flush()
            self._close_sample(state)

    def _close_sample(self, state: SampleState) -> None:
        request = state.request
        state.finish_reason = request.status.finish_reason
        request.finished_time = time.monotonic()
        self.runner.release([request.request_id])

    def _collect_outputs(self) -> list[RequestOutput]:
        outputs = []
        for group in list(self._groups.values()):
            if not group.changed:
                continue
            if not group.stream and not group.finished:
                group.changed = False
                continue
            outputs.append(group.take_output())
            if group.finished:
                self._forget(group)
        return outputs

    def _forget(self, group: RequestGroup | BeamGroup) -> None:
        self._groups.pop(group.request_id, None)
        for request_id in group.all_request_ids():
            self._group_of.pop(request_id, None)

    def _finish_group(
        self, group: RequestGroup | BeamGroup, status: RequestStatus, error: str | None = None
    ) -> None:
        """Abort or fail every sample of a group; its final output comes from the next step."""
        live = group.close(status, error)
        self.scheduler.finish_requests(live, status)
        self.runner.release(live)
        self._pending.append(group.take_output())
        self._forget(group)

    def _fail_step(
        self,
        scheduled: SchedulerOutput,
        exc: BaseException,
        request_ids: Iterable[str] | None = None,
    ) -> None:
        """Fail every request of a step; their final outputs wait in ``_pending``.

        The step's KV was not (reliably) written, so first the blocks it registered in the
        prefix cache become unfindable again, and so do those of a continuation queued behind
        it (which reads the failed step's tokens). The requests whose pages the step's swap
        copies were moving fail with it: their pages hold nothing trustworthy.

        With ``request_ids`` (a ``RequestFailure``: the runner blamed those requests, after its
        swaps and copies were done) only they fail; the step's other requests did not advance
        and run again next step.
        """
        plans = [scheduled]
        if self._in_flight is not None and self._in_flight.plan is not scheduled:
            plans.append(self._in_flight.plan)
        for plan in plans:
            self.scheduler.discard_failed_step(plan)
        message = f"{type(exc).__name__}: {exc}"
        if request_ids is not None:
            failed = list(request_ids)  # a forked sample's id leads to its group too
        else:
            failed = [
                request_id
                for plan in plans
                for request_id in (
                    [s.request_id for s in plan.scheduled]
                    + plan.swapped_in_ids
                    + plan.swapped_out_ids
                )
            ]
        for request_id in failed:
            group = self._group_of.get(request_id)
            if group is not None and group.request_id in self._groups:
                self._finish_group(group, RequestStatus.FINISHED_ERROR, message)

    def shutdown(self) -> None:
        """Stop worker processes (tensor parallelism); safe to call twice."""
        self.runner.shutdown()

    # ----------------------------------------------------------------- stats
    def kv_snapshot(self) -> dict:
        """A read-only picture of the KV page pool (``engine/kv_snapshot.py``; /dashboard)."""
        return take_kv_snapshot(self.scheduler)

    def stats(self) -> EngineStats:
        """Counters and gauges for metrics and logs (``engine/stats.py``)."""
        return engine_stats(self)
