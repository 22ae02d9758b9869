"""What the engine hands back to users: vLLM-shaped request outputs.

One ``RequestOutput`` per user request (an ``n > 1`` request has ``n`` completions in
``outputs``). In streaming use, each ``CompletionOutput`` also carries ``delta_text`` and
``delta_token_ids``: what was added since the previous output of that request.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pagedllm.step_result import Logprobs

__all__ = ["CompletionOutput", "Logprobs", "RequestMetrics", "RequestOutput"]


@dataclass(slots=True)
class RequestMetrics:
    """Wall-clock times (monotonic seconds) of one request's life."""

    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    finished_time: float | None = None
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache (every tier)
    num_preemptions: int = 0

    @property
    def time_to_first_token(self) -> float | None:
        if self.first_token_time is None:
            return None
        return self.first_token_time - self.arrival_time


@dataclass(slots=True)
class CompletionOutput:
    """One generated sequence of a request."""

    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None = None
    logprobs: list[Logprobs] | None = None  # one dict per generated token, when asked
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error" | None
    stop_reason: int | str | None = None  # the stop string or stop token id that ended it
    delta_text: str = ""
    delta_token_ids: list[int] = field(default_factory=list)
    delta_logprobs: list[Logprobs] | None = None
    score: float | None = None  # beam search: cumulative_logprob / len ** length_penalty

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(slots=True)
class RequestOutput:
    """The state of one user request after an engine step."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    prompt_logprobs: list[Logprobs | None] | None = None  # None for the first prompt token
    metrics: RequestMetrics | None = None
    error: str | None = None  # set when finish_reason is "error": what went wrong

    @property
    def num_cached_tokens(self) -> int:
        """Prompt tokens served from the prefix cache (device, host and disk tiers) rather
        than computed, counted at first admission (as in vLLM's ``RequestOutput``)."""
        return 0 if self.metrics is None else self.metrics.num_cached_tokens
