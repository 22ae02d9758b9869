"""Window layers over freed pages: the torch path and the Triton kernels never read them.

Pages wholly before each sequence's window are "freed": their table slots point to a null
block and both the null block and the freed pages are filled with NaN (as is every unused
page). Outputs must stay finite and equal to a dense reference, with soft-capping too.
"""

from __future__ import annotations

import pytest
import torch

from kernel_utils import make_metadata, make_paged_case, tolerance
from pagedllm.attention.torch_backend import TorchAttentionBackend, softcapped_attention
from pagedllm.attention.triton_backend import TritonAttentionBackend

F32 = torch.float32
SEQS = [(70, 1), (33, 1), (90, 1), (64, 20), (45, 45)]  # decodes first, then prefill chunks
NUM_DECODES = 3
WINDOW = 12


def _poisoned_case(device, block_size):
    seq_lens = [s for s, _ in SEQS]
    case = make_paged_case(seq_lens, block_size, 2, 32, F32, device, seed=3, spare_blocks=4)
    used = set(case.block_tables.flatten().tolist())
    tables = case.block_tables.clone()
    freed = set()
    for i, (seq_len, q_len) in enumerate(SEQS):
        first_pos = seq_len - q_len - WINDOW + 1  # the first query's earliest visible key
        for p in range(max(0, first_pos) // block_size):
            freed.add(int(tables[i, p]))
    null = next(b for b in range(case.kv_cache.shape[1]) if b not in used)
    for i, (seq_len, q_len) in enumerate(SEQS):
        skip = max(0, seq_len - q_len - WINDOW + 1) // block_size
        tables[i, :skip] = null
    # the null block, freed pages and every page no table names hold NaN
    for b in range(case.kv_cache.shape[1]):
        if b in freed or b not in used:
            case.kv_cache[:, b] = float("nan")
    case.block_tables = tables
    assert freed, "the case must free some pages"
    return case


def _dense(case, query, scale, softcap):
    outs, start = [], 0
    for i, (seq_len, q_len) in enumerate(SEQS):
        q = query[start : start + q_len].transpose(0, 1)[None]
        k = case.keys[i].transpose(0, 1)[None]
        v = case.values[i].transpose(0, 1)[None]
        q_pos = torch.arange(seq_len - q_len, seq_len, device=query.device)[:, None]
        k_pos = torch.arange(seq_len, device=query.device)[None, :]
        mask = (k_pos <= q_pos) & (k_pos > q_pos - WINDOW)
        out = softcapped_attention(q, k, v, scale, softcap or 1e9, mask)
        outs.append(out[0].transpose(0, 1))
        start += q_len
    return torch.cat(outs)


@pytest.mark.parametrize("block_size", [4, 16])
@pytest.mark.parametrize("softcap", [None, 3.0])
def test_freed_pages_poisoned_with_nan_are_never_read(device, block_size, softcap):
    case = _poisoned_case(device, block_size)
    query_lens = [q for _, q in SEQS]
    gen = torch.Generator().manual_seed(11)
    query = (torch.randn(sum(query_lens), 4, 32, generator=gen) * 2).to(device)
    metadata = make_metadata(case, query_lens, NUM_DECODES, torch.zeros(0, device=device))
    want = _dense(case, query, 0.3, softcap)
    for backend in (TorchAttentionBackend(), TritonAttentionBackend(max_model_len=128)):
        got = backend.forward(query, case.kv_cache, metadata, 0.3, WINDOW, softcap=softcap)
        assert torch.isfinite(got).all(), type(backend).__name__
        torch.testing.assert_close(got, want, **tolerance(F32))
