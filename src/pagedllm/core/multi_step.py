"""When to run several decode steps per scheduling round (multi-step decoding).

A GPU decode step of a small model is shorter than the host work around it (scheduling, batch
layout, sampling set-up, outputs), and the GPU idles while the host works. Running ``k`` decode
steps back to back on the device, feeding each step's sampled tokens to the next without a
host round trip, pays that host work once per ``k`` tokens. The price: a request that stops
early computes up to ``k - 1`` tokens that are thrown away, and new requests wait up to ``k``
steps to be admitted. So it is used only when nothing waits, every running request is a plain
decode, and their sampling needs no per-token host work (penalties, logprobs, stop strings,
min_tokens). Pure Python: part of ``core``.
"""

from __future__ import annotations

from collections.abc import Sequence

from pagedllm.config import SchedulerConfig
from pagedllm.core.kv_cache_manager import KVCacheManager
from pagedllm.core.request import Request


def multi_step_count(
    config: SchedulerConfig,
    running: Sequence[Request],
    num_waiting: int,
    num_swapped: int,
    kv: KVCacheManager,
) -> int:
    """How many decode steps the next round may run (1 = an ordinary step)."""
    k = config.num_scheduler_steps
    if k <= 1 or num_waiting or num_swapped or not running:
        return 1
    if len(running) > min(config.max_num_seqs, config.max_num_batched_tokens):
        return 1
    extra_blocks = 0
    for req in running:
        decoding = req.num_computed_tokens > 0 and req.num_tokens - req.num_computed_tokens == 1
        if not decoding or not plain_sampling(req):
            return 1
        if req.num_tokens + k - 1 > config.max_model_len:
            return 1
        extra_blocks += kv.num_blocks_to_extend(req, req.num_computed_tokens + k)
    # copy-on-write of a shared last block is not counted: allocation may still preempt then
    if extra_blocks > kv.num_free_blocks:
        return 1
    return k


def plain_sampling(req: Request) -> bool:
    """True when the request's next tokens need no per-token host decision but stopping."""
    p = req.sampling_params
    return (
        p.logprobs is None
        and p.prompt_logprobs is None
        and not p.stop
        and p.presence_penalty == 0.0
        and p.frequency_penalty == 0.0
        and p.repetition_penalty == 1.0
        and p.structured_output is None  # its mask needs the previous token on the host
        and req.num_output_tokens >= p.min_tokens
    )
