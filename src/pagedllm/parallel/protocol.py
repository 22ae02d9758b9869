"""How the driver (rank 0) has the other ranks join its LM-head calls.

Every rank runs the same forward, so the collectives inside the decoder line up by
construction. The LM head is different: only rank 0 samples, and it alone knows which hidden
rows need logits (the last token of each sampling request, the prompt rows of a request that
asked for prompt logprobs, ...). So rank 0's ``compute_logits`` first broadcasts a small header
``[op, rows, hidden]`` and then the rows themselves; the other ranks, after their forward, loop
on ``serve_logits`` computing their vocab slice for each call until the ``DONE`` header. Rows
are broadcast rather than indexed so the workers stay independent of how the runner picks
them (a decode step sends ``batch x hidden`` values: kilobytes).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .comm import tp_broadcast

OP_DONE = 0
OP_LOGITS = 1

LogitsFn = Callable[[torch.Tensor], torch.Tensor]


class DriverLogits:
    """Rank 0's ``compute_logits``: announce the call, share the rows, then compute."""

    def __init__(self, compute_logits: LogitsFn, dtype: torch.dtype, device: torch.device) -> None:
        self._compute = compute_logits
        self._dtype = dtype  # the workers receive rows of this dtype
        self._device = device

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        rows, dim = hidden.shape
        header = torch.tensor([OP_LOGITS, rows, dim], dtype=torch.long, device=self._device)
        tp_broadcast(header)
        hidden = tp_broadcast(hidden.to(self._dtype).contiguous())
        return self._compute(hidden)

    def done(self) -> None:
        """Tell the other ranks this step needs no more logits."""
        tp_broadcast(torch.tensor([OP_DONE, 0, 0], dtype=torch.long, device=self._device))


def serve_logits(compute_logits: LogitsFn, dtype: torch.dtype, device: torch.device) -> int:
    """A worker rank's side: join each of rank 0's LM-head calls until DONE; returns the count."""
    calls = 0
    header = torch.empty(3, dtype=torch.long, device=device)
    while True:
        op, rows, dim = tp_broadcast(header).tolist()
        if op == OP_DONE:
            return calls
        hidden = tp_broadcast(torch.empty((rows, dim), dtype=dtype, device=device))
        compute_logits(hidden)  # its all-gather is the collective rank 0 waits on
        calls += 1
