"""The plain decode round: the one rule for multi-step decoding and async continuations.

A GPU decode step of a small model is shorter than the host work around it (scheduling, batch
layout, sampling set-up, outputs), and the GPU idles while the host works. Two ways out share
one precondition, written once here:

- multi-step decoding (``num_scheduler_steps = k > 1``): ``k`` decode steps back to back on the
  device, each step's sampled tokens fed to the next without a host round trip;
- async scheduling (``core/continuation.py``): the next round planned and queued before this
  round's tokens are back.

Both need a *plain decode round*: nothing waits, every request is a one-token decode whose
next tokens need no per-token host decision but stopping (no penalties, logprobs, stop strings,
pending min_tokens, beam selection), and the pool holds the blocks of the whole round. The
price of a round of ``k``: a request that stops early computes up to ``k - 1`` tokens that are
thrown away, and new requests wait up to ``k`` steps. Pure Python: part of ``core``.
"""

from __future__ import annotations

from collections.abc import Sequence

from pagedllm.config import SchedulerConfig
from pagedllm.core.kv_cache_manager import KVCacheManager
from pagedllm.core.request import Request


def plain_decode_round(
    config: SchedulerConfig,
    requests: Sequence[Request],
    kv: KVCacheManager,
    in_flight: int = 0,
) -> int:
    """Steps ``k`` of a plain decode round of ``requests``, or 0 when they cannot have one.

    ``in_flight`` counts the tokens per request already launched but not yet applied (the
    round a continuation follows). ``k`` is ``num_scheduler_steps`` when every request has room
    for it, else 1. Copy-on-write of a shared last block is not counted: allocation may still
    fail then, and the caller falls back to ordinary scheduling.
    """
    if not requests or not all(plain_sampling(r) for r in requests):
        return 0
    k = config.num_scheduler_steps
    if k > 1 and len(requests) > min(config.max_num_seqs, config.max_num_batched_tokens):
        k = 1
    if any(r.num_tokens + in_flight + k - 1 > config.max_model_len for r in requests):
        k = 1
    need = sum(
        kv.num_blocks_to_extend(req, req.num_computed_tokens + in_flight + k) for req in requests
    )
    return k if need <= kv.num_free_blocks else 0


def multi_step_count(
    config: SchedulerConfig,
    running: Sequence[Request],
    num_waiting: int,
    num_swapped: int,
    kv: KVCacheManager,
) -> int:
    """How many decode steps the next round may run (1 = an ordinary step)."""
    if config.num_scheduler_steps <= 1 or num_waiting or num_swapped:
        return 1
    for req in running:
        if not (req.num_computed_tokens > 0 and req.num_tokens - req.num_computed_tokens == 1):
            return 1  # a prefill or a request waiting for the engine: not a decode round
    return max(1, plain_decode_round(config, running, kv))


def plain_sampling(req: Request) -> bool:
    """True when the request's next tokens need no per-token host decision but stopping."""
    p = req.sampling_params
    return (
        req.num_beam_candidates == 0
        and p.logprobs is None
        and p.prompt_logprobs is None
        and not p.stop
        and p.presence_penalty == 0.0
        and p.frequency_penalty == 0.0
        and p.repetition_penalty == 1.0
        and p.structured_output is None  # its mask needs the previous token on the host
        and req.num_output_tokens >= p.min_tokens
    )
