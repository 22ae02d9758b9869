"""Per-sequence grammar matchers and the allowed-token bitmask of each sampling step.

A matcher's state is a function of the tokens the sequence has generated, so the manager keeps
for each sequence ``(matcher, tokens consumed)`` and, before it writes a mask, feeds the matcher
the tokens appended since (``sync``). That single rule covers every path a token can arrive by:
ordinary steps, the first token of ``n > 1`` forks (each child has its own matcher), and
recompute preemption (the output is kept, the matcher with it). Should a sequence ever have
fewer tokens than its matcher saw, a fresh matcher replays them. Masks are int32 words, bit ``t %
32`` of word ``t // 32`` set when token ``t`` is allowed (llguidance's and xgrammar's layout).

The rows of a step are filled one after the other. llguidance's thread pool (``LLExecutor``)
was tried and measured slower on the H200 host (2.98 vs 1.88 ms per step for 32 JSON rows,
``benchmarks/RESULTS.md``), so it is not used.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .backend import GrammarCompiler
from .params import StructuredOutputParams

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _SequenceState:
    matcher: Any
    consumed: int = 0
    failed: bool = False


class StructuredOutputManager:
    """Matchers of the sequences that have a constraint, keyed by scheduler request id."""

    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        self.compiler = GrammarCompiler(tokenizer, vocab_size)
        self.vocab_size = vocab_size
        self._states: dict[str, _SequenceState] = {}

    @property
    def num_words(self) -> int:
        return (self.vocab_size + 31) // 32

    def validate(self, spec: StructuredOutputParams | None) -> None:
        """Compile ``spec`` now (cached) so a bad grammar is a ValueError before queueing."""
        if spec is not None:
            self.compiler.matcher(spec)

    def sync(self, request_id: str, spec: StructuredOutputParams, tokens: list[int]) -> Any:
        """The sequence's matcher, advanced over the tokens generated since the last call."""
        state = self._states.get(request_id)
        if state is None:
            state = self._states[request_id] = _SequenceState(self.compiler.matcher(spec))
        if len(tokens) < state.consumed:  # the sequence lost tokens: replay from the start
            state = self._states[request_id] = _SequenceState(self.compiler.matcher(spec))
        for token in tokens[state.consumed :]:
            # a finished grammar allows only EOS; with ignore_eos those EOS keep coming and
            # the mask stays EOS-only (nothing more is consumed)
            if state.failed or state.matcher.is_stopped():
                break
            if not state.matcher.consume_token(token):
                # only possible if a token was forced past the mask: stop constraining rather
                # than mask every token
                logger.warning("grammar of %s rejected a token: %s", request_id,
                               state.matcher.get_error())  # fmt: skip
                state.failed = True
        state.consumed = len(tokens)
        return state.matcher

    def bitmask(
        self, request_ids: Sequence[str], specs: Sequence[StructuredOutputParams | None],
        output_token_ids: Sequence[list[int]],
    ) -> np.ndarray | None:  # fmt: skip
        """``[rows, ceil(V / 32)]`` int32 allowed-token words (all ones for unconstrained
        rows), or ``None`` when no row has a constraint."""
        if all(spec is None for spec in specs):
            return None
        mask = np.full((len(specs), self.num_words), -1, dtype=np.int32)
        for row, (rid, spec, tokens) in enumerate(
            zip(request_ids, specs, output_token_ids, strict=True)
        ):
            if spec is None:
                continue
            matcher = self.sync(rid, spec, tokens)
            if self._states[rid].failed:
                continue
            view = mask[row]
            matcher.unsafe_compute_mask_ptr(view.ctypes.data, view.nbytes)
        return mask

    def is_finished(self, request_id: str) -> bool:
        """Whether the sequence's grammar is complete (only EOS may follow), as of the last
        ``bitmask`` call; False for sequences without a constraint."""
        state = self._states.get(request_id)
        return state is not None and not state.failed and state.matcher.is_stopped()

    def release(self, request_ids: Iterable[str]) -> None:
        """Forget finished sequences' matchers."""
        for request_id in request_ids:
            self._states.pop(request_id, None)

    @property
    def num_active(self) -> int:
        return len(self._states)
