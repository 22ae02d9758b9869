"""The request state machine (pure Python).

A request "catches up" its computed tokens to its total tokens: there is no prefill phase or
decode phase. ``num_computed_tokens`` counts tokens whose KV is in the cache; ``all_token_ids``
is prompt + generated. A step computes ``num_tokens - num_computed_tokens`` tokens (or a chunk
of them); when it reaches the end, the request samples one new token.

States::

    WAITING --schedule--> RUNNING --preempt(recompute)--> WAITING (PREEMPTED)
                            |     --preempt(swap)------> SWAPPED --swap in--> RUNNING
                            +--> FINISHED_STOPPED | FINISHED_LENGTH | FINISHED_ABORTED
                                 | FINISHED_ERROR

Only the scheduler changes ``status``; the engine appends sampled tokens through the
scheduler's ``update_from_output``.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from pagedllm.sampling_params import SamplingParams


class RequestStatus(enum.IntEnum):
    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2  # waiting again after a recompute preemption
    SWAPPED = 3  # blocks live in CPU swap space
    FINISHED_STOPPED = 4  # EOS, a stop token id or a stop string
    FINISHED_LENGTH = 5  # max_tokens or max_model_len reached
    FINISHED_ABORTED = 6
    FINISHED_ERROR = 7

    @property
    def finished(self) -> bool:
        return self >= RequestStatus.FINISHED_STOPPED

    @property
    def finish_reason(self) -> str | None:
        """OpenAI-style finish reason, or None while unfinished."""
        return _FINISH_REASONS.get(self)


_FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH: "length",
    RequestStatus.FINISHED_ABORTED: "abort",
    RequestStatus.FINISHED_ERROR: "error",
}


@dataclass(slots=True)
class Request:
    """One sequence being generated.

    ``n > 1`` requests are expanded by the engine into one Request per sample (children created
    with the KV manager's ``fork``), so a Request always has exactly one output sequence.
    """

    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    eos_token_ids: frozenset[int] = frozenset()
    arrival_time: float = field(default_factory=time.monotonic)
    max_tokens: int = 16  # resolved: sampling_params.max_tokens capped by max_model_len
    status: RequestStatus = RequestStatus.WAITING
    output_token_ids: list[int] = field(default_factory=list)
    all_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens found in the prefix cache at first admission
    num_preemptions: int = 0
    stop_reason: int | str | None = None  # the stop token id or stop string that ended it
    parent_id: str | None = None  # set on forked children of an n > 1 request
    sample_index: int = 0  # which of the n samples this is
    # sequences this request grows to (n samples or beam width): admission reserves them all
    # against max_num_seqs, so forks never overrun it
    group_width: int = 1
    # > 0 for a beam: each step returns this many top logprobs and the token is appended by the
    # engine's beam search (``Scheduler.append_token``), not by ``update_from_output``
    num_beam_candidates: int = 0
    # timing (monotonic seconds), filled by the scheduler/engine
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finished_time: float | None = None

    def __post_init__(self) -> None:
        if not self.all_token_ids:
            self.all_token_ids = list(self.prompt_token_ids) + list(self.output_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        """Prompt plus generated tokens."""
        return len(self.all_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status.finished

    def append_output_token(self, token_id: int) -> None:
        """Record a newly sampled token (its KV is computed in the next step)."""
        self.output_token_ids.append(token_id)
        self.all_token_ids.append(token_id)

    def check_token_stop(self, max_model_len: int) -> RequestStatus | None:
        """Token-level stop check after a token was appended: EOS, stop ids, lengths.

        Stop strings are checked by the engine's detokenizer, which knows the text.
        Returns the finished status to move to, or None to keep going.
        """
        params = self.sampling_params
        last = self.output_token_ids[-1]
        eos = not params.ignore_eos and last in self.eos_token_ids
        # before min_tokens the sampler bans EOS and stop ids, except for a grammar that has
        # finished (only EOS may follow): that EOS ends the request, the constraint wins
        early_ok = eos and params.structured_output is not None
        if self.num_output_tokens >= params.min_tokens or early_ok:
            if eos:
                self.stop_reason = None
                return RequestStatus.FINISHED_STOPPED
            if last in params.stop_token_ids:
                self.stop_reason = last
                return RequestStatus.FINISHED_STOPPED
        if self.num_output_tokens >= self.max_tokens or self.num_tokens >= max_model_len:
            return RequestStatus.FINISHED_LENGTH
        return None
