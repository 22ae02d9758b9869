"""TritonAttentionBackend end to end: write_kv then forward on a mixed decode + prefill batch,
against the dense reference and the TorchAttentionBackend oracle."""

from __future__ import annotations

import pytest
import torch

from kernel_utils import (
    dense_reference,
    make_metadata,
    make_paged_case,
    tolerance,
    torch_backend_or_none,
)
from pagedllm.attention.triton_backend import TritonAttentionBackend

F32, BF16 = torch.float32, torch.bfloat16
# (seq_len, query_len): three decodes first, then prefill chunks (one over a cached prefix)
SEQS = [(17, 1), (64, 1), (3, 1), (40, 40), (75, 30), (9, 2)]
NUM_DECODES = 3


def _batch(device, block_size, num_kv_heads, group, head_dim, dtype):
    """A case whose new tokens' K/V are *not* in the cache yet, plus the rows to write."""
    seq_lens = [s for s, _ in SEQS]
    query_lens = [q for _, q in SEQS]
    case = make_paged_case(seq_lens, block_size, num_kv_heads, head_dim, dtype, device, seed=5)
    new_k, new_v, slots = [], [], []
    tables = case.block_tables.tolist()
    for i, (seq_len, q_len) in enumerate(SEQS):
        for t in range(seq_len - q_len, seq_len):
            slots.append(tables[i][t // block_size] * block_size + t % block_size)
        new_k.append(case.keys[i][seq_len - q_len :])
        new_v.append(case.values[i][seq_len - q_len :])
    slot_mapping = torch.tensor(slots, dtype=torch.int64, device=device)
    # Overwrite the new tokens' slots with noise: forward is only right if write_kv ran.
    flat = case.kv_cache.view(2, -1, num_kv_heads, head_dim)
    flat[:, slot_mapping] = torch.randn_like(flat[:, slot_mapping].float()).to(dtype) * 5
    gen = torch.Generator().manual_seed(9)
    query = torch.randn(sum(query_lens), num_kv_heads * group, head_dim, generator=gen)
    metadata = make_metadata(case, query_lens, NUM_DECODES, slot_mapping)
    return case, query.to(dtype).to(device), torch.cat(new_k), torch.cat(new_v), metadata


@pytest.mark.parametrize(
    "block_size,num_kv_heads,group,head_dim,dtype,splits",
    [
        (16, 2, 4, 64, F32, None),
        (8, 1, 8, 64, F32, 3),
        (32, 2, 1, 128, BF16, 2),
        (16, 3, 3, 64, BF16, None),  # SmolLM2 shape: 9 heads over 3 KV heads
    ],
)
@pytest.mark.parametrize("sliding_window", [None, 24])
def test_forward_matches_references(
    device: torch.device,
    block_size: int,
    num_kv_heads: int,
    group: int,
    head_dim: int,
    dtype: torch.dtype,
    splits: int | None,
    sliding_window: int | None,
) -> None:
    case, query, key, value, metadata = _batch(
        device, block_size, num_kv_heads, group, head_dim, dtype
    )
    oracle = torch_backend_or_none()
    oracle_cache = case.kv_cache.clone()
    backend = TritonAttentionBackend(max_model_len=4096, num_sms=8, decode_splits=splits)
    scale = head_dim**-0.5

    backend.write_kv(key, value, case.kv_cache, metadata.slot_mapping)
    out = backend.forward(query, case.kv_cache, metadata, scale, sliding_window)

    assert out.shape == query.shape and out.dtype == query.dtype
    qsl = metadata.query_start_loc.tolist()
    for i in range(len(SEQS)):
        rows = slice(qsl[i], qsl[i + 1])
        ref = dense_reference(query[rows], case.keys[i], case.values[i], scale, sliding_window)
        torch.testing.assert_close(out[rows].float(), ref, **tolerance(dtype))
    if oracle is not None:
        oracle.write_kv(key, value, oracle_cache, metadata.slot_mapping)
        torch.testing.assert_close(case.kv_cache, oracle_cache, atol=0, rtol=0)
        expected = oracle.forward(query, oracle_cache, metadata, scale, sliding_window)
        torch.testing.assert_close(out.float(), expected.float(), **tolerance(dtype))


def test_pure_decode_batch_uses_heuristic_splits(device: torch.device) -> None:
    """A decode-only batch (what a CUDA graph captures) with split count from the heuristic."""
    lens = [300, 1, 513, 64]
    case = make_paged_case(lens, 16, 1, 64, F32, device)
    query = torch.randn(len(lens), 4, 64, generator=torch.Generator().manual_seed(1)).to(device)
    slots = torch.full((len(lens),), -1, dtype=torch.int64, device=device)
    metadata = make_metadata(case, [1] * len(lens), len(lens), slots)
    backend = TritonAttentionBackend(max_num_seqs=8, max_model_len=1024, num_sms=16)
    assert backend.num_splits(len(lens), 1, metadata.max_seq_len, device) == 2
    out = backend.forward(query, case.kv_cache, metadata, 0.125)
    for i in range(len(lens)):
        ref = dense_reference(query[i : i + 1], case.keys[i], case.values[i], 0.125)[0]
        torch.testing.assert_close(out[i], ref, **tolerance(F32))


def test_rejects_bad_shapes(device: torch.device) -> None:
    case = make_paged_case([4], 16, 2, 64, F32, device)
    metadata = make_metadata(case, [1], 1, torch.zeros(1, dtype=torch.int64, device=device))
    backend = TritonAttentionBackend()
    with pytest.raises(ValueError, match="heads"):
        backend.forward(torch.zeros(1, 3, 64, device=device), case.kv_cache, metadata, 1.0)
    with pytest.raises(ValueError, match="tokens, heads, head_dim"):
        backend.forward(torch.zeros(1, 128, device=device), case.kv_cache, metadata, 1.0)
