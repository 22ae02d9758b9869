"""A launched step whose sampled tokens may still be on their way from the device.

``Executor.launch`` queues a step's kernels and returns a ``PendingStep`` at once; the sampled
token ids (``[rows, k]``: ``k`` tokens per row, one unless a multi-step round) are copied to
pinned host memory with a non-blocking copy and an event behind it. ``collect()`` waits for that
event only, never for the whole device, so a step queued after this one (async scheduling)
keeps the device busy while the host works on this one's results. ``last_token_ids`` stays on
the device: the next round's inputs are read from it there without a host round trip.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from pagedllm.step_result import StepResult


@dataclass(slots=True)
class PendingStep:
    """Handle of a launched step; ``collect()`` returns its ``StepResult``."""

    result: StepResult = field(default_factory=StepResult)  # tokens filled by collect()
    row_ids: list[str] = field(default_factory=list)  # request id of each sampled row
    token_ids: torch.Tensor | None = None  # device [rows, k]; None: nothing sampled
    last_token_ids: torch.Tensor | None = None  # device [rows]: each row's newest token
    sampling_batch: Any = None  # the SamplingBatch used (a continuation of the rows reuses it)
    _host: torch.Tensor | None = None
    _event: Any = None  # torch.cuda.Event
    _collected: bool = False

    def track(self, row_ids: list[str], token_ids: torch.Tensor) -> None:
        """Start the device-to-host copy of ``token_ids`` ``[rows, k]`` without waiting."""
        self.row_ids = row_ids
        self.token_ids = token_ids
        self.last_token_ids = token_ids[:, -1]
        if token_ids.is_cuda:
            self._host = torch.empty(token_ids.shape, dtype=token_ids.dtype, pin_memory=True)
            self._host.copy_(token_ids, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()

    def collect(self) -> StepResult:
        """Wait for this step's tokens (only them) and return the filled ``StepResult``."""
        if self._collected or self.token_ids is None:
            self._collected = True
            return self.result
        if self._event is not None:
            self._event.synchronize()
            values = self._host.tolist()
        else:
            values = self.token_ids.tolist()
        self.result.tokens.update(zip(self.row_ids, values, strict=True))
        self._collected = True
        return self.result
