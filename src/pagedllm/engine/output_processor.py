"""Front-end side of the engine-core process: token-id deltas -> ``RequestOutput``.

The core sends per step only what changed (``core_protocol.WireOutput``). Here each request
keeps its prompt, its samples' accumulated ids, logprobs and text, and decodes its new ids
with the same ``IncrementalDetokenizer`` the in-process engine uses, so a stream's deltas are
the same either way. Requests with stop strings are decoded by the core (it must stop them at
the string, not a step later), and beam search's final texts too; their text arrives ready.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pagedllm.engine.core_protocol import WireOutput
from pagedllm.engine.detokenizer import IncrementalDetokenizer
from pagedllm.engine.outputs import CompletionOutput, Logprobs, RequestMetrics, RequestOutput
from pagedllm.sampling_params import SamplingParams


def decodes_in_front(params: Any, tokenizer: Any) -> bool:
    """Whether the front end decodes this request's text (else the core sends it)."""
    return tokenizer is not None and isinstance(params, SamplingParams) and not params.stop


@dataclass(slots=True)
class _Sample:
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    logprobs: list[Logprobs] | None = None
    detokenizer: IncrementalDetokenizer | None = None


@dataclass(slots=True)
class FrontRequest:
    """One request as the front end tracks it."""

    prompt: str | None
    prompt_token_ids: list[int]
    params: Any
    decode_here: bool
    tokenizer: Any
    samples: dict[int, _Sample] = field(default_factory=dict)
    _wire_metrics: tuple | None = None  # the last metrics received, and their RequestMetrics
    _metrics: RequestMetrics | None = None

    def _sample(self, index: int) -> _Sample:
        sample = self.samples.get(index)
        if sample is None:
            sample = _Sample()
            if self.decode_here:
                sample.detokenizer = IncrementalDetokenizer(
                    self.tokenizer, self.prompt_token_ids, self.params
                )
            if getattr(self.params, "logprobs", None) is not None:
                sample.logprobs = []
            self.samples[index] = sample
        return sample

    def apply(self, wire: WireOutput) -> RequestOutput:
        """Fold one step's delta in; return the output the in-process engine would have."""
        completions = []
        beam = _is_beam(wire)
        samples = self.samples
        for c in wire.completions:
            sample = samples.get(c.index) or self._sample(c.index)
            delta_text = c.delta_text
            if beam:  # whole sequences, once
                sample.token_ids, sample.text = list(c.delta_token_ids), c.delta_text
                delta_ids: list[int] = []
                delta_text = ""
            else:
                delta_ids = c.delta_token_ids
                sample.token_ids.extend(delta_ids)
                detokenizer = sample.detokenizer
                if detokenizer is not None:
                    delta_text = detokenizer.add_tokens(delta_ids)[0] if delta_ids else ""
                    if c.finish_reason is not None and c.finish_reason in ("stop", "length"):
                        delta_text += detokenizer.flush()
                if delta_text:
                    sample.text += delta_text
            if sample.logprobs is not None and c.delta_logprobs:
                sample.logprobs.extend(c.delta_logprobs)
            # positional arguments (field order of ``outputs.py``): keyword construction of
            # these slotted dataclasses costs twice as much, once per request per engine step
            out = CompletionOutput(
                c.index, sample.text, list(sample.token_ids), c.cumulative_logprob,
                sample.logprobs, c.finish_reason, c.stop_reason, delta_text, delta_ids,
                c.delta_logprobs if sample.logprobs is not None else None, c.score,
            )  # fmt: skip
            completions.append(out)
        if wire.metrics != self._wire_metrics:  # the same tuple step after step while decoding
            self._wire_metrics = wire.metrics
            self._metrics = None
            if wire.metrics is not None:
                arrival, scheduled, first, finished, cached, preemptions = wire.metrics
                self._metrics = RequestMetrics(arrival, scheduled, first, None, finished, cached,
                                               preemptions)  # fmt: skip
        return RequestOutput(
            wire.request_id, self.prompt, self.prompt_token_ids, completions, wire.finished,
            wire.prompt_logprobs, self._metrics, wire.error,
        )  # fmt: skip


def _is_beam(wire: WireOutput) -> bool:
    """Beam search's outputs carry scores (whole sequences, not deltas); a loop, not ``any()``
    over a generator: this runs once per request per engine step."""
    for c in wire.completions:
        if c.score is not None:
            return True
    return False
