"""The engine's side of one beam-search request: its beams as scheduler requests.

``BeamGroup`` collects each live beam's reported candidates; when all have reported it runs
``BeamSearch.step`` and applies the choice through the scheduler: beams no one continues are
finished (their pages freed at once), a beam continued once takes the token itself, a beam
continued ``m`` times is forked ``m - 1`` times (the forks share its pages copy-on-write).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from pagedllm.core.request import Request, RequestStatus
from pagedllm.core.scheduler import Scheduler
from pagedllm.engine.beam_search import BeamSearch, BeamSearchParams
from pagedllm.engine.outputs import CompletionOutput, RequestMetrics, RequestOutput
from pagedllm.sampling_params import SamplingParams
from pagedllm.step_result import Logprobs


@dataclass(slots=True)
class Beam:
    request: Request
    score: float = 0.0  # summed logprob of its generated tokens


@dataclass(slots=True)
class BeamGroup:
    """A user request searched with ``params.beam_width`` beams."""

    request_id: str
    root_id: str  # the first beam's request id; every fork's parent_id (one group to count)
    prompt: str | None
    prompt_token_ids: list[int]
    params: BeamSearchParams
    search: BeamSearch
    beams: list[Beam]
    arrival_time: float
    decode: object  # token ids -> text
    reports: dict[str, Logprobs] = field(default_factory=dict)
    error: str | None = None
    changed: bool = False
    stream: bool = False  # one output, when the search ends
    closed: bool = False  # aborted or failed
    num_forks: int = 0
    peak_blocks: int = 0  # most KV blocks the group's beams held at once (the study's figure)

    @property
    def finished(self) -> bool:
        return self.search.done or self.closed

    def live_request_ids(self) -> list[str]:
        return [b.request.request_id for b in self.beams]

    def all_request_ids(self) -> list[str]:
        return self.live_request_ids()

    def close(self, status: RequestStatus, error: str | None) -> list[str]:
        """Abort or fail the search; returns the live beams' request ids."""
        live = self.live_request_ids()
        self.beams = []
        self.closed = True
        self.error = error
        return live

    def report(self, request: Request, candidates: Logprobs) -> bool:
        """Record a beam's candidates; True when every live beam has reported."""
        self.reports[request.request_id] = candidates
        return all(b.request.request_id in self.reports for b in self.beams)

    def advance(self, scheduler: Scheduler) -> list[str]:
        """One search step through the scheduler; returns the ids of the beams that ended."""
        beams = self.beams
        reports = [self.reports[b.request.request_id] for b in beams]
        self.reports = {}
        tokens = [list(b.request.output_token_ids) for b in beams]
        choices = self.search.step([b.score for b in beams], tokens, reports)
        uses = Counter(c.parent for c in choices)
        ended = [b.request.request_id for i, b in enumerate(beams) if uses[i] == 0]
        # pruned beams first: their pages go back before the forks allocate
        scheduler.finish_requests(ended, RequestStatus.FINISHED_ABORTED)
        taken: set[int] = set()
        self.beams = []
        for choice in choices:
            parent = beams[choice.parent]
            if choice.parent in taken:
                child = self._new_beam(parent.request, tokens[choice.parent], choice.token)
                scheduler.fork_request(parent.request.request_id, child)
                self.beams.append(Beam(child, choice.score))
                self.num_forks += 1
            else:
                taken.add(choice.parent)
                scheduler.append_token(parent.request.request_id, choice.token)
                self.beams.append(Beam(parent.request, choice.score))
        self.changed = self.search.done
        return ended

    def _new_beam(self, parent: Request, tokens: list[int], token: int) -> Request:
        return Request(
            request_id=f"{self.root_id}~{self.num_forks}",
            prompt_token_ids=list(parent.prompt_token_ids),
            sampling_params=parent.sampling_params,
            eos_token_ids=parent.eos_token_ids,
            arrival_time=parent.arrival_time,
            max_tokens=parent.max_tokens,
            output_token_ids=[*tokens, token],
            parent_id=self.root_id,
            group_width=parent.group_width,
            num_beam_candidates=parent.num_beam_candidates,
        )

    def take_output(self) -> RequestOutput:
        """The final output: the kept hypotheses, best first."""
        self.changed = False
        outputs = [
            CompletionOutput(
                index=i,
                text=self.decode(h.token_ids),
                token_ids=h.token_ids,
                cumulative_logprob=h.cum_logprob,
                finish_reason=h.finish_reason if not self.closed else "abort",
                score=h.score,
            )
            for i, h in enumerate(self.search.finished)
        ]
        if self.closed and self.error is not None:
            outputs = outputs or [CompletionOutput(0, "", [], finish_reason="error")]
        now = time.monotonic()
        return RequestOutput(
            request_id=self.request_id,
            prompt=self.prompt,
            prompt_token_ids=self.prompt_token_ids,
            outputs=outputs,
            finished=True,
            metrics=RequestMetrics(arrival_time=self.arrival_time, finished_time=now),
            error=self.error,
        )


def start_beam_group(
    request_id: str,
    internal_id: str,
    prompt: str | None,
    ids: list[int],
    params: BeamSearchParams,
    max_tokens: int,
    eos_token_ids: frozenset[int],
    arrival: float,
    decode: object,
) -> tuple[BeamGroup, Request]:
    """The group and its first beam (the prompt), to be queued with the scheduler."""
    eos = frozenset() if params.ignore_eos else eos_token_ids
    search = BeamSearch(params.beam_width, max_tokens, params.length_penalty, eos)
    first = Request(
        request_id=f"{internal_id}#beam",
        prompt_token_ids=list(ids),
        # greedy, EOS never a stop here: the search decides what ends a beam
        sampling_params=SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True),
        eos_token_ids=eos_token_ids,
        arrival_time=arrival,
        max_tokens=max_tokens,
        group_width=params.beam_width,
        num_beam_candidates=search.num_candidates,
    )
    group = BeamGroup(
        request_id=request_id,
        root_id=first.request_id,
        prompt=prompt,
        prompt_token_ids=list(ids),
        params=params,
        search=search,
        beams=[Beam(first)],
        arrival_time=arrival,
        decode=decode,
    )
    return group, first
