"""A launched step whose sampled tokens may still be on their way from the device.

``ModelRunner.launch`` queues a step's kernels and returns a ``PendingStep`` at once; the
sampled token ids are copied to pinned host memory with a non-blocking copy and an event
behind it. ``collect()`` waits for that event only, never for the whole device, so a step
queued after this one (async scheduling) keeps the device busy while the host works on this
one's results. ``last_token_ids`` stays on the device: the next round's inputs are read from it
there without a host round trip.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(slots=True)
class PendingStep:
    """Handle of a launched step; ``collect()`` returns its ``ModelOutput``."""

    result: Any  # ModelOutput, filled by collect()
    row_ids: list[str] = field(default_factory=list)  # request id of each sampled row
    multi_step: bool = False  # token_ids is [rows, num_steps] (a multi-step round)
    token_ids: torch.Tensor | None = None  # device; None: nothing sampled
    last_token_ids: torch.Tensor | None = None  # device [rows]: each row's newest token
    sampling_batch: Any = None  # the SamplingBatch used (a continuation of the rows reuses it)
    _host: torch.Tensor | None = None
    _event: Any = None  # torch.cuda.Event
    _collected: bool = False

    def track(self, row_ids: list[str], token_ids: torch.Tensor, multi_step: bool) -> None:
        """Start the device-to-host copy of ``token_ids`` without waiting for it."""
        self.row_ids = row_ids
        self.multi_step = multi_step
        self.token_ids = token_ids
        self.last_token_ids = token_ids[:, -1] if multi_step else token_ids
        if token_ids.is_cuda:
            self._host = torch.empty(token_ids.shape, dtype=token_ids.dtype, pin_memory=True)
            self._host.copy_(token_ids, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()

    def collect(self) -> Any:
        """Wait for this step's tokens (only them) and return the filled ``ModelOutput``."""
        if self._collected or self.token_ids is None:
            self._collected = True
            return self.result
        if self._event is not None:
            self._event.synchronize()
            values = self._host.tolist()
        else:
            values = self.token_ids.tolist()
        target = self.result.sampled_multi if self.multi_step else self.result.sampled
        for request_id, value in zip(self.row_ids, values, strict=True):
            target[request_id] = value
        self._collected = True
        return self.result
