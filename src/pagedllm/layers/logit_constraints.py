"""Logit bias and structured-output masks: one self-contained step of the sampler.

Runs after the raw logprobs and before bans, penalties and truncation (``layers/sampler.py``).
Everything stays on the logits' device: no host sync.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
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


def grammar_mask_tensors(
    words: np.ndarray, vocab_size: int, device: torch.device
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The rows some grammar restricts and their allowed tokens, ready for the device.

    Rows of all ones (unconstrained) are dropped. On CPU the words are unpacked on the host
    (one ``np.unpackbits`` pass, far cheaper than shifting 32 lanes in torch); on a GPU the
    words travel (32x smaller) through pinned memory without a sync and are unpacked there.
    """
    rows = np.flatnonzero((words != -1).any(axis=1))
    if rows.size == 0:
        return None, None
    words = np.ascontiguousarray(words[rows])
    row_index = to_device(rows, torch.int64, device)
    if torch.device(device).type == "cpu":
        bits = np.unpackbits(words.view(np.uint8), axis=1, bitorder="little")[:, :vocab_size]
        return row_index, torch.from_numpy(bits.view(np.bool_))
    return row_index, to_device(words, torch.int32, device)


def apply_bias_and_grammar(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """Add each row's logit bias, then set the tokens its grammar forbids to ``-inf``.

    All on the logits' device with no host sync. A copy is returned if anything applies.
    """
    if batch.bias_rows is None and batch.grammar_rows is None:
        return logits
    logits = logits.clone()
    if batch.bias_rows is not None:
        logits.index_put_((batch.bias_rows, batch.bias_cols), batch.bias_values, accumulate=True)
    if batch.grammar_rows is not None:
        allowed = batch.grammar_allowed
        if allowed.dtype != torch.bool:  # int32 words: [R, W, 32] bits -> [R, 32 * W], cut to V
            shifts = torch.arange(32, dtype=torch.int32, device=allowed.device)
            allowed = ((allowed[:, :, None] >> shifts) & 1).bool().flatten(1)
        allowed = allowed[:, : logits.shape[1]]
        rows = batch.grammar_rows
        # torch.where (branch-free) beats masked_fill on the CPU for dense random masks
        if rows.numel() == logits.shape[0]:
            logits = torch.where(allowed, logits, float("-inf"))
        else:
            logits[rows] = torch.where(allowed, logits[rows], float("-inf"))
    return logits
