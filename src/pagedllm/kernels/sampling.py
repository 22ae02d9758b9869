"""Temperature sampling in one pass over the logits (Gumbel-max), without a softmax.

The torch sampler turns ``[N, V]`` logits into tokens with about nine full passes over a float32
copy of them (cast, divide by the temperature, two softmax passes, draw noise, clamp, divide,
argmax, plus the greedy argmax): ~0.5 ms per step at W1's 256 rows x 151,936 tokens on an
H200, 8% of a decode step. Sampling from ``softmax(l / T)`` is the same as taking
``argmax(l / T + G)`` with ``G`` standard Gumbel noise, ``G = -log(E)``, ``E ~ Exponential(1)``
(the exponential race the torch sampler runs, in log space). So one kernel reads each logit once
(in the model's dtype), draws its noise in registers (Philox, keyed by a seed drawn on the device
from torch's generator: no host sync, reproducible under ``torch.manual_seed``), and keeps a
running maximum. Each program covers one chunk of one row; the chunk winners are reduced by a
tiny ``argmax``. Only plain temperature sampling takes this path (``layers/sampler.py``): rows
with their own seed, bans, penalties, top-k/top-p/min-p or logprobs use the torch sampler.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_BLOCK = 2048  # logits per loop iteration of one program (four groups of _BLOCK // 4)
_TINY = 1.1754943508222875e-38  # smallest normal float32: keeps log() finite


# Sizes that change with the batch are not specialized on (no compile in the middle of serving).
@triton.jit(do_not_specialize=["vocab", "stride_row", "chunk_len", "num_chunks"])
def _gumbel_max_kernel(
    logits_ptr,
    inv_temp_ptr,
    seed_ptr,
    out_val_ptr,
    out_idx_ptr,
    vocab,
    stride_row,
    chunk_len,
    num_chunks,
    QUARTER: tl.constexpr,
    TINY: tl.constexpr,
):
    """Per program: the Gumbel-max winner of one chunk of one row.

    The kernel is bound by arithmetic, not memory (39M logits of W1 are 78 MB: 20 us of reads),
    so one Philox call yields four uniforms (``randint4x``) for four logits ``QUARTER`` apart,
    and everything stays in the log2 domain: with ``E = -ln(u) = -log2(u) * ln 2``,
    ``argmax(l / T - ln E)`` is ``argmax(l / T * log2(e) - log2(-log2(u)))`` (constant shifts
    and a positive scale do not move an argmax): two ``log2`` per logit, no ``exp`` or ``ln``.
    """
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    seed = tl.load(seed_ptr)
    scale = tl.load(inv_temp_ptr + row) * 1.4426950408889634  # 1/T * log2(e)
    lo = chunk * chunk_len
    hi = tl.minimum(lo + chunk_len, vocab)
    row_ptr = logits_ptr + row.to(tl.int64) * stride_row
    best_val = tl.full([], float("-inf"), tl.float32)
    best_idx = tl.full([], 0, tl.int32) + lo
    q = tl.arange(0, QUARTER)
    for start in range(lo, hi, 4 * QUARTER):
        # counters row * vocab + start + q are unique per (row, token group) in this call
        r0, r1, r2, r3 = tl.randint4x(seed, row * vocab + start + q)
        best_val, best_idx = _group_max(
            row_ptr, r0, start, hi, scale, best_val, best_idx, QUARTER, TINY
        )
        best_val, best_idx = _group_max(
            row_ptr, r1, start + QUARTER, hi, scale, best_val, best_idx, QUARTER, TINY
        )
        best_val, best_idx = _group_max(
            row_ptr, r2, start + 2 * QUARTER, hi, scale, best_val, best_idx, QUARTER, TINY
        )
        best_val, best_idx = _group_max(
            row_ptr, r3, start + 3 * QUARTER, hi, scale, best_val, best_idx, QUARTER, TINY
        )
    tl.store(out_val_ptr + row * num_chunks + chunk, best_val)
    tl.store(out_idx_ptr + row * num_chunks + chunk, best_idx.to(tl.int64))


@triton.jit
def _group_max(
    row_ptr, bits, base, hi, scale, best_val, best_idx, QUARTER: tl.constexpr, TINY: tl.constexpr
):
    """Fold logits ``base .. base + QUARTER`` (with their random bits) into the running
    ``(max, argmax)``."""
    offs = base + tl.arange(0, QUARTER)
    mask = offs < hi
    logit = tl.load(row_ptr + offs, mask=mask, other=float("-inf")).to(tl.float32)
    u = tl.maximum(tl.random.uint_to_uniform_float(bits), TINY)
    noise = tl.log2(tl.maximum(-tl.log2(u), TINY))
    score = tl.where(mask, logit * scale - noise, float("-inf"))
    block_val = tl.max(score, 0)
    block_idx = base + tl.argmax(score, 0)
    better = block_val > best_val
    return tl.where(better, block_val, best_val), tl.where(better, block_idx, best_idx)


_SMS: dict[torch.device, int] = {}


def _sm_count(device: torch.device) -> int:
    if device not in _SMS:
        cuda = device.type == "cuda"
        _SMS[device] = torch.cuda.get_device_properties(device).multi_processor_count if cuda else 1
    return _SMS[device]


def _num_chunks(num_rows: int, vocab: int, num_sms: int) -> int:
    """Split rows so that there are about four programs per SM, chunks of >= 4 blocks."""
    want = -(-4 * num_sms // max(num_rows, 1))
    return max(1, min(want, -(-vocab // (4 * _BLOCK))))


def gumbel_sample(
    logits: torch.Tensor, inv_temperature: torch.Tensor, seed: torch.Tensor | None = None
) -> torch.Tensor:
    """One token per row of ``logits`` ``[N, V]`` drawn from ``softmax(logits * inv_temperature)``.

    ``inv_temperature`` ``[N]`` float32 (1 / T per row). ``seed`` is a 1-element int64 device
    tensor; by default it is drawn from torch's generator on the logits' device. Returns ``[N]``
    int64 on the logits' device; nothing is synchronized with the host.
    """
    if logits.dim() != 2 or logits.stride(1) != 1:
        raise ValueError(f"logits must be a row-contiguous [N, V] tensor, got {logits.shape}")
    num_rows, vocab = logits.shape
    if num_rows * vocab >= 2**31:
        raise ValueError("gumbel_sample supports fewer than 2**31 logits per call")
    device = logits.device
    if seed is None:
        seed = torch.randint(0, 2**31 - 1, (1,), dtype=torch.int64, device=device)
    chunks = _num_chunks(num_rows, vocab, _sm_count(device))
    chunk_len = -(-vocab // chunks)
    vals = torch.empty((num_rows, chunks), dtype=torch.float32, device=device)
    idx = torch.empty((num_rows, chunks), dtype=torch.int64, device=device)
    if num_rows:
        _gumbel_max_kernel[(num_rows, chunks)](
            logits,
            inv_temperature,
            seed,
            vals,
            idx,
            vocab,
            logits.stride(0),
            chunk_len,
            chunks,
            QUARTER=_BLOCK // 4,
            TINY=_TINY,
            num_warps=8,
        )
    if chunks == 1:
        return idx[:, 0]
    return idx.gather(1, vals.argmax(dim=1, keepdim=True)).squeeze(1)
