"""The engine's view of one user request: its n samples, their text, and its outputs.

The scheduler sees one ``Request`` per sample; the user sees one ``RequestOutput`` per request.
A ``RequestGroup`` connects the two: it owns the detokenizers and logprob lists of each sample
and builds the (streamed) outputs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pagedllm.core.request import Request, RequestStatus
from pagedllm.engine.detokenizer import IncrementalDetokenizer
from pagedllm.engine.outputs import CompletionOutput, Logprobs, RequestMetrics, RequestOutput
from pagedllm.sampling_params import SamplingParams


@dataclass(slots=True)
class SampleState:
    """One of the n sequences of a request, as the user sees it."""

    request: Request
    detokenizer: IncrementalDetokenizer
    logprobs: list[Logprobs] | None
    cumulative_logprob: float | None
    delta_text: str = ""
    delta_token_ids: list[int] = field(default_factory=list)
    delta_logprobs: list[Logprobs] = field(default_factory=list)
    finish_reason: str | None = None
    reported_finished: bool = False

    def take_completion(self) -> CompletionOutput:
        """The completion so far, with the deltas since the last call (which are reset)."""
        request = self.request
        out = CompletionOutput(
            index=request.sample_index,
            text=self.detokenizer.output_text,
            token_ids=list(request.output_token_ids),
            cumulative_logprob=self.cumulative_logprob,
            logprobs=self.logprobs,
            finish_reason=self.finish_reason,
            stop_reason=request.stop_reason,
            delta_text=self.delta_text,
            delta_token_ids=self.delta_token_ids,
            delta_logprobs=self.delta_logprobs if self.logprobs is not None else None,
        )
        self.delta_text, self.delta_token_ids, self.delta_logprobs = "", [], []
        return out


@dataclass(slots=True)
class RequestGroup:
    """A user request: ``n`` samples that share the prompt (and its KV blocks)."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    samples: list[SampleState]
    unforked: list[Request]  # samples 1..n-1 until the prompt is computed and they fork
    arrival_time: float
    prompt_logprobs: list[Logprobs | None] | None = None
    error: str | None = None
    changed: bool = False
    stream: bool = True  # False: only the final output is emitted (offline batches)
    detokenize: bool = True  # False: ids only, the front end decodes (engine-core process)

    @property
    def detokenize_at_end(self) -> bool:
        """Without streaming or stop strings, text is decoded once, when a sample finishes."""
        return not self.stream and not self.params.stop

    @property
    def finished(self) -> bool:
        return not self.unforked and all(s.finish_reason is not None for s in self.samples)

    def state_of(self, request: Request, make: Callable[[Request], SampleState]) -> SampleState:
        """The sample's state; a fork child that just took its first token gets one now."""
        for state in self.samples:
            if state.request is request:
                return state
        self.unforked.remove(request)
        state = make(request)
        self.samples.append(state)
        return state

    def all_request_ids(self) -> list[str]:
        return [s.request.request_id for s in self.samples] + [r.request_id for r in self.unforked]

    def close(self, status: RequestStatus, error: str | None) -> list[str]:
        """Abort or fail the unfinished samples; returns their request ids."""
        live = [s.request.request_id for s in self.samples if s.finish_reason is None]
        for state in self.samples:
            if state.finish_reason is None:
                state.finish_reason = status.finish_reason
        for request in self.unforked:
            request.status = status
        self.unforked = []
        self.error = error
        return live

    def metrics(self) -> RequestMetrics:
        first = self.samples[0].request
        token_times = [s.request.first_token_time for s in self.samples]
        return RequestMetrics(
            arrival_time=self.arrival_time,
            first_scheduled_time=first.first_scheduled_time,
            first_token_time=min((t for t in token_times if t is not None), default=None),
            last_token_time=time.monotonic(),
            finished_time=time.monotonic() if self.finished else None,
            num_cached_tokens=first.num_cached_tokens,
            num_preemptions=sum(s.request.num_preemptions for s in self.samples),
        )

    def take_output(self) -> RequestOutput:
        """The request's output after this step (deltas reset for the next one)."""
        self.changed = False
        finished = self.finished
        for sample in self.samples:
            if sample.finish_reason is not None:
                sample.reported_finished = True
        return RequestOutput(
            request_id=self.request_id,
            prompt=self.prompt,
            prompt_token_ids=self.prompt_token_ids,
            outputs=[s.take_completion() for s in self.samples],
            finished=finished,
            prompt_logprobs=self.prompt_logprobs,
            metrics=self.metrics(),
            error=self.error,
        )


def new_request_group(
    request_id: str,
    internal_id: str,
    text: str | None,
    ids: list[int],
    params: SamplingParams,
    max_tokens: int,
    eos_token_ids: frozenset[int],
    arrival: float,
    make_state: Callable[[Request], SampleState],
    stream: bool = True,
    detokenize: bool = True,
) -> tuple[RequestGroup, list[Request]]:
    """A user request's group and its ``n`` scheduler requests (sample 0 first; the others
    fork from it when its prompt completes)."""
    requests = [
        Request(
            request_id=f"{internal_id}.{i}",
            prompt_token_ids=list(ids),
            sampling_params=params,
            eos_token_ids=eos_token_ids,
            arrival_time=arrival,
            max_tokens=max_tokens,
            parent_id=None if i == 0 else f"{internal_id}.0",
            sample_index=i,
            group_width=params.n,
        )
        for i in range(params.n)
    ]
    group = RequestGroup(
        request_id=request_id,
        prompt=text,
        prompt_token_ids=list(ids),
        params=params,
        samples=[make_state(requests[0])],
        unforked=requests[1:],
        arrival_time=arrival,
        prompt_logprobs=[None] if params.prompt_logprobs is not None else None,
        stream=stream,
        detokenize=detokenize,
    )
    return group, requests
