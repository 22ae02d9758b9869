"""Beam search inside the engine, on shared KV pages.

A beam group is one user request searched with ``beam_width`` beams. Each beam is a ``Request``
of its own; a beam that several new beams continue is forked (``Scheduler.fork_request``): the
forks share every page of their parent and copy only the partial last page when they first
write into it (copy-on-write). A beam no new beam continues is finished at once, so its private
pages return to the pool in the same step. Beams run in the same continuous batch as ordinary
requests: each step a beam computes one token and reports its top ``num_candidates`` raw
logprobs (``Request.num_beam_candidates``); when every live beam of the group has reported,
``BeamSearch.step`` chooses the next beams and the engine appends their tokens.

Selection and ranking follow Hugging Face transformers' ``_beam_search`` (``do_sample=False``,
``early_stopping=False``) step for step:

- candidates: the top ``K = max(2, 1 + #eos) * beam_width`` of ``score(beam) + logprob(token)``
  over every beam and token (the first step has only the prompt's beam);
- a candidate ranked among the first ``beam_width`` that ends in EOS, or reaches ``max_tokens``,
  becomes a finished hypothesis with score ``sum_logprobs / generated_len ** length_penalty``
  (EOS counted in the length); the ``beam_width`` best hypotheses are kept;
- the next beams are the ``beam_width`` best candidates that did not finish;
- the search ends when every candidate finished (``max_tokens``) or, once ``beam_width``
  hypotheses are kept, when the best running beam's score divided by
  ``generated_len ** length_penalty`` cannot beat the worst kept hypothesis.

Pure Python over plain lists: the engine glue is ``BeamGroup``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from pagedllm.step_result import Logprobs


@dataclass(slots=True)
class BeamSearchParams:
    """Beam search options (vLLM's offline ``BeamSearchParams``), validated at construction.

    ``beam_width`` beams and ``beam_width`` returned sequences; ``max_tokens`` generated tokens
    at most; ``length_penalty`` the exponent of the generated length that divides a finished
    sequence's summed logprob (transformers' meaning); ``ignore_eos``: EOS does not end a beam.
    """

    beam_width: int
    max_tokens: int = 16
    length_penalty: float = 1.0
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        for name in ("beam_width", "max_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if isinstance(self.length_penalty, bool) or not isinstance(
            self.length_penalty, (int, float)
        ):
            raise TypeError(f"length_penalty must be a number, got {self.length_penalty!r}")
        self.length_penalty = float(self.length_penalty)
        if self.length_penalty != self.length_penalty or abs(self.length_penalty) == float("inf"):
            raise ValueError(f"length_penalty must be finite, got {self.length_penalty}")
        if not isinstance(self.ignore_eos, bool):
            raise TypeError(f"ignore_eos must be a bool, got {self.ignore_eos!r}")


@dataclass(slots=True)
class BeamSearchSequence:
    """One returned sequence (vLLM's shape): ``tokens`` are prompt + generated ids."""

    tokens: list[int]
    output_token_ids: list[int]
    text: str
    cum_logprob: float
    score: float  # cum_logprob / len(output_token_ids) ** length_penalty: the ranking key
    finish_reason: str | None


@dataclass(slots=True)
class BeamSearchOutput:
    """The ``beam_width`` best sequences of one prompt, best first."""

    sequences: list[BeamSearchSequence]
    error: str | None = None


@dataclass(slots=True)
class Hypothesis:
    """A finished sequence: generated tokens, summed logprob, length-penalized score."""

    token_ids: list[int]
    cum_logprob: float
    score: float
    finish_reason: str  # "stop" (ended in EOS) or "length"


@dataclass(slots=True)
class Choice:
    """One next beam: continue running beam ``parent`` with ``token``; ``score`` is the sum."""

    parent: int
    token: int
    score: float


@dataclass(slots=True)
class BeamSearch:
    """The search state of one group: running scores, kept hypotheses, generated length."""

    beam_width: int
    max_tokens: int
    length_penalty: float
    eos_token_ids: frozenset[int]
    finished: list[Hypothesis] = field(default_factory=list)
    generated: int = 0  # tokens each running beam has
    done: bool = False

    @property
    def num_candidates(self) -> int:
        """Candidates kept per step, and the top logprobs each beam must report."""
        return max(2, 1 + len(self.eos_token_ids)) * self.beam_width

    def step(
        self,
        scores: Sequence[float],
        tokens: Sequence[Sequence[int]],
        reports: Sequence[Logprobs],
    ) -> list[Choice]:
        """One search step over the running beams (their summed logprobs, generated tokens and
        reported top logprobs); returns the next beams, best first (empty when done)."""
        k = self.beam_width
        flat = [
            (score + lp, b, token)
            for b, (score, report) in enumerate(zip(scores, reports, strict=True))
            for token, lp in report.items()
        ]
        flat.sort(key=lambda c: -c[0])
        top = flat[: self.num_candidates]
        length = self.generated + 1
        at_limit = length >= self.max_tokens
        choices: list[Choice] = []
        for rank, (score, b, token) in enumerate(top):
            hit = at_limit or token in self.eos_token_ids
            if hit and rank < k:
                reason = "length" if at_limit and token not in self.eos_token_ids else "stop"
                self.finished.append(
                    Hypothesis(
                        [*tokens[b], token], score, score / length**self.length_penalty, reason
                    )
                )
            elif not hit and len(choices) < k:
                choices.append(Choice(b, token, score))
        self.finished.sort(key=lambda h: -h.score)
        del self.finished[k:]
        self.generated = length
        self.done = not choices or self._cannot_improve(choices[0].score)
        return [] if self.done else choices

    def _cannot_improve(self, best_running: float) -> bool:
        """transformers' early-stop heuristic (``early_stopping=False``)."""
        if len(self.finished) < self.beam_width:
            return False
        best = best_running / self.generated**self.length_penalty
        return best <= self.finished[-1].score
