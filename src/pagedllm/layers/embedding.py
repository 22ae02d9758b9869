"""Token embedding and the LM head (which may share the embedding's weight)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class VocabEmbedding(nn.Module):
    """Token id -> hidden vector lookup."""

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.weight = nn.Parameter(
            torch.empty(vocab_size, hidden_size, dtype=dtype, device=device), requires_grad=False
        )

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.weight)


class LMHead(VocabEmbedding):
    """Hidden -> vocab logits (float32); ``tie`` makes it share an embedding's weight."""

    def tie(self, embedding: VocabEmbedding) -> None:
        """Share ``embedding``'s weight (tied input/output embeddings)."""
        self.weight = embedding.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        # The matmul runs in the model dtype (like HF); the sampler wants float32.
        return F.linear(hidden, self.weight).float()


# ------------------------------------------------------------------ tensor parallelism
class VocabParallelEmbedding(VocabEmbedding):
    """Each rank holds ``ceil(V/tp)`` rows of the table; ids outside a rank's slice look up
    zeros there, and an all-reduce sums the one non-zero row per token. At tp=1 it is the
    plain lookup."""

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        *,
        tp_rank: int | None = None,
        tp_size: int | None = None,
    ) -> None:
        from pagedllm.parallel.sharding import vocab_range
        from pagedllm.parallel.state import get_tp_rank, get_tp_size

        rank = get_tp_rank() if tp_rank is None else tp_rank
        size = get_tp_size() if tp_size is None else tp_size
        start, stop, rows = vocab_range(vocab_size, rank, size)
        super().__init__(rows, hidden_size, dtype, device)
        self.vocab_size = vocab_size  # the full vocabulary
        self.vocab_start, self.vocab_stop = start, stop
        self.tp_rank, self.tp_size = rank, size

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return super().forward(input_ids)
        from pagedllm.parallel.comm import tp_all_reduce

        mine = (input_ids >= self.vocab_start) & (input_ids < self.vocab_stop)
        local = torch.where(mine, input_ids - self.vocab_start, 0)
        out = F.embedding(local, self.weight)
        out = out * mine.unsqueeze(-1).to(out.dtype)
        return tp_all_reduce(out)

    def load_weight(self, param_name: str, loaded: torch.Tensor, name: str) -> None:
        """Copy this rank's rows of the full ``[V, hidden]`` checkpoint tensor; zero padding."""
        from pagedllm.layers.linear import copy_weight

        if self.tp_size == 1:
            copy_weight(self.weight, loaded, name)
            return
        if tuple(loaded.shape) != (self.vocab_size, self.weight.shape[1]):
            raise ValueError(
                f"weight {name!r}: checkpoint shape {tuple(loaded.shape)} does not match the "
                f"model's {(self.vocab_size, self.weight.shape[1])}; check the config"
            )
        count = self.vocab_stop - self.vocab_start
        with torch.no_grad():
            self.weight[count:].zero_()
        copy_weight(self.weight[:count], loaded[self.vocab_start : self.vocab_stop], name)


class ParallelLMHead(VocabParallelEmbedding):
    """The LM head over a vocab slice per rank; logits are all-gathered to the full vocab.

    ``tie`` shares a ``VocabParallelEmbedding``'s weight (same slice). At tp=1 it computes
    exactly what ``LMHead`` does.
    """

    def tie(self, embedding: VocabEmbedding) -> None:
        """Share ``embedding``'s weight (tied input/output embeddings)."""
        self.weight = embedding.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = F.linear(hidden, self.weight).float()
        if self.tp_size == 1:
            return logits
        from pagedllm.parallel.comm import tp_all_gather

        logits = tp_all_gather(logits, dim=-1)
        if logits.shape[-1] != self.vocab_size:  # drop the padding rows' logits
            logits = logits[..., : self.vocab_size].contiguous()
        return logits
