"""Sampling seam of the runner: which rows of a step sample, with what, and what comes back.

``RowSampler`` turns a plan's sampling rows (the scheduled requests whose step reaches the end
of their tokens, plus the fork children of an ``n > 1`` request, which sample from their
parent's row) into logits rows, a ``SamplingBatch`` and sampled ids ``[rows, 1]``. It also
computes prompt logprobs, keeps seeded requests' generators, and asks the sampler for the top
candidates a beam needs (``Request.num_beam_candidates``). The sampler itself lives in
``layers/sampler.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from pagedllm.core.request import Request
from pagedllm.core.scheduler_output import SchedulerOutput
from pagedllm.layers.sampler import Sampler, SamplingBatch, compute_prompt_logprobs
from pagedllm.step_result import RequestFailure, StepResult
from pagedllm.structured.manager import StructuredOutputManager
from pagedllm.transfer import to_device
from pagedllm.worker.input_batch import ModelInputs
from pagedllm.worker.pending import PendingStep


class RowSampler:
    """Samples a step's rows; holds per-request state (seeded generators) until released."""

    def __init__(
        self,
        compute_logits: Callable[[torch.Tensor], torch.Tensor],
        device: torch.device,
        vocab_size: int,
        structured: StructuredOutputManager,
    ) -> None:
        self.compute_logits = compute_logits
        self.structured = structured
        self.device = device
        self.vocab_size = vocab_size
        self.sampler = Sampler()
        self._generators: dict[str, torch.Generator] = {}

    def batch(self, rows: list[Request], prev: PendingStep | None = None) -> SamplingBatch:
        """The rows' sampling tensors; a continuation of the same rows reuses the previous
        step's (only plain-sampling requests continue: nothing in it depends on the step)."""
        ids = [r.request_id for r in rows]
        if prev is not None and prev.sampling_batch is not None and prev.row_ids == ids:
            return prev.sampling_batch
        # the mask first: it brings each matcher up to date, and a grammar that has finished
        # (only EOS may follow) overrides min_tokens' EOS ban, or no token would be allowed
        grammar_bitmask = self.structured.bitmask(
            ids,
            [r.sampling_params.structured_output for r in rows],
            [r.output_token_ids for r in rows],
        )
        batch = SamplingBatch.build(
            params=[r.sampling_params for r in rows],
            output_token_ids=[r.output_token_ids for r in rows],
            prompt_token_ids=[r.prompt_token_ids for r in rows],
            generators=[self._request_generator(r) for r in rows],
            banned_token_ids=[
                [] if self.structured.is_finished(r.request_id) else _banned_tokens(r) for r in rows
            ],
            device=self.device,
            vocab_size=self.vocab_size,
            grammar_bitmask=grammar_bitmask,
        )
        beams = [r.num_beam_candidates for r in rows]
        if any(beams):
            # a beam's candidates are its top raw logprobs (the sampled greedy id is unused)
            batch.num_logprobs = [k or n for k, n in zip(beams, batch.num_logprobs, strict=True)]
            batch.max_num_logprobs = max(k for k in batch.num_logprobs if k is not None)
        return batch

    def sample(
        self,
        plan: SchedulerOutput,
        inputs: ModelInputs,
        hidden: torch.Tensor,
        pending: PendingStep,
        prev: PendingStep | None,
    ) -> None:
        """Sample every sampling row (fork children from their parent's row) into ``pending``."""
        rows: list[int] = []
        row_requests: list[Request] = []
        for i, sched in enumerate(plan.scheduled):
            if not sched.sample:
                continue
            for request_id in (sched.request_id, *sched.fork_ids):
                rows.append(inputs.query_start[i + 1] - 1)
                row_requests.append(plan.requests[request_id])
        if not rows:
            return
        row_index = to_device(rows, torch.long, self.device)
        logits = self.compute_logits(hidden.index_select(0, row_index))
        batch = self.batch(row_requests, prev)
        pending.sampling_batch = batch
        sampled = self.sampler(logits, batch)
        pending.track([r.request_id for r in row_requests], sampled.token_ids[:, None])
        result = pending.result
        for j, request in enumerate(row_requests):
            if sampled.logprobs is not None and sampled.logprobs[j] is not None:
                result.logprobs[request.request_id] = sampled.logprobs[j]
            if sampled.sampled_logprobs is not None:
                result.sampled_logprob[request.request_id] = sampled.sampled_logprobs[j]

    def prompt_logprobs(
        self, plan: SchedulerOutput, inputs: ModelInputs, hidden: torch.Tensor, result: StepResult
    ) -> None:
        """Logprobs of each prompt token given the ones before it (vLLM's prompt_logprobs)."""
        for i, sched in enumerate(plan.scheduled):
            request = plan.requests[sched.request_id]
            k = request.sampling_params.prompt_logprobs
            start = sched.start_position
            if k is None or start >= request.num_prompt_tokens or request.num_output_tokens:
                continue
            # row j predicts token start + j + 1; keep only rows whose target is a prompt token
            end = min(start + len(sched.token_ids), request.num_prompt_tokens - 1)
            if end <= start:
                continue
            lo = inputs.query_start[i]
            logits = self.compute_logits(hidden[lo : lo + end - start])
            targets = torch.tensor(
                request.prompt_token_ids[start + 1 : end + 1], dtype=torch.long, device=self.device
            )
            result.prompt_logprobs[request.request_id] = compute_prompt_logprobs(logits, targets, k)

    def _request_generator(self, request: Request) -> torch.Generator | None:
        """``_generator``, its failure blamed on this request alone (the engine fails only it)."""
        try:
            return self._generator(request)
        except Exception as exc:  # noqa: BLE001 - re-raised with the request it belongs to
            raise RequestFailure([request.request_id], exc) from exc

    def _generator(self, request: Request) -> torch.Generator | None:
        seed = request.sampling_params.seed
        if seed is None:
            return None
        generator = self._generators.get(request.request_id)
        if generator is None:
            # each of the n samples of a seeded request gets its own stream
            generator = torch.Generator(device=self.device)
            generator.manual_seed(seed + request.sample_index)
            self._generators[request.request_id] = generator
        return generator

    def release(self, request_ids: Sequence[str]) -> None:
        """Forget per-request state (seeded generators) of finished requests."""
        for request_id in request_ids:
            self._generators.pop(request_id, None)


def _banned_tokens(request: Request) -> list[int]:
    """Before min_tokens, EOS and stop token ids may not be sampled."""
    params = request.sampling_params
    if request.num_output_tokens >= params.min_tokens:
        return []
    banned = list(params.stop_token_ids)
    if not params.ignore_eos:
        banned.extend(request.eos_token_ids)
    return banned
