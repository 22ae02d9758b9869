"""Plain data a model step hands back: below ``worker/`` and ``engine/``, importing neither.

``worker/`` fills a ``StepResult``; ``engine/`` reads it and builds the user-facing outputs
(``engine/outputs.py``). Keeping it here keeps every import arrow pointing one way.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

# One position's logprobs: token id -> logprob (the chosen token is always a key).
Logprobs = dict[int, float]


@dataclass(slots=True)
class StepResult:
    """What one step produced, keyed by request id.

    ``tokens[id]`` holds a sampled row's ``num_steps`` tokens (one unless it was a multi-step
    round): the ``[rows, k]`` token matrix, row by row. A fork child of an ``n > 1`` request has
    a row of its own. ``logprobs`` / ``sampled_logprob`` are filled for rows that asked (and
    for beams, whose top candidates are their ``logprobs``).
    """

    tokens: dict[str, list[int]] = field(default_factory=dict)
    logprobs: dict[str, Logprobs] = field(default_factory=dict)
    sampled_logprob: dict[str, float] = field(default_factory=dict)
    prompt_logprobs: dict[str, list[Logprobs]] = field(default_factory=dict)


class RequestFailure(RuntimeError):
    """Work for particular requests failed (their sampling state, say), not the whole step.

    Raised by the runner with the ids of the requests at fault; the engine fails only those and
    runs the rest of the step again in the next one. Lives here, below ``worker/`` and
    ``engine/``, because the first raises it and the second handles it.
    """

    def __init__(self, request_ids: Iterable[str], cause: BaseException) -> None:
        self.request_ids = list(request_ids)
        self.cause = cause
        super().__init__(f"{type(cause).__name__}: {cause}")
