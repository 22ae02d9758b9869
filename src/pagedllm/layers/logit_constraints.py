"""Logit bias and structured-output masks: one self-contained step of the sampler.

Runs after the raw logprobs and before bans, penalties and truncation (``layers/sampler.py``).
Everything stays on the logits' device: no host sync.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from pagedllm.sampling_params import SamplingParams
from pagedllm.transfer import to_device

if TYPE_CHECKING:
    from pagedllm.layers.sampler import SamplingBatch


def logit_bias_triples(
    params: list[SamplingParams], vocab_size: int, device: torch.device
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Rows, token ids and biases of every row's ``logit_bias`` (Nones when no row has one)."""
    rows: list[int] = []
    cols: list[int] = []
    values: list[float] = []
    for row, p in enumerate(params):
        for token_id, bias in (p.logit_bias or {}).items():
            if token_id < vocab_size:  # checked against the vocabulary at admission
                rows.append(row)
                cols.append(token_id)
                values.append(bias)
    if not rows:
        return None, None, None
    return (
        to_device(rows, torch.int64, device),
        to_device(cols, torch.int64, device),
        to_device(values, torch.float32, device),
    )


def apply_bias_and_grammar(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """Add each row's logit bias, then set the tokens its grammar forbids to ``-inf``.

    All on the logits' device with no host sync: the bitmask words are unpacked by shifts
    (``[N, W, 32]`` bits -> ``[N, 32 * W]``, cut to V). A copy is returned if anything applies.
    """
    if batch.bias_rows is None and batch.grammar_bitmask is None:
        return logits
    logits = logits.clone()
    if batch.bias_rows is not None:
        logits.index_put_((batch.bias_rows, batch.bias_cols), batch.bias_values, accumulate=True)
    if batch.grammar_bitmask is not None:
        words = batch.grammar_bitmask
        shifts = torch.arange(32, dtype=torch.int32, device=words.device)
        allowed = ((words[:, :, None] >> shifts) & 1).bool().flatten(1)[:, : logits.shape[1]]
        logits.masked_fill_(~allowed, float("-inf"))
    return logits
