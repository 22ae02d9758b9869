"""The paged torch attention backend against dense attention on contiguous K/V."""

from __future__ import annotations

import math

import pytest
import torch

from pagedllm.attention.metadata import build_metadata
from pagedllm.attention.torch_backend import TorchAttentionBackend

HEAD_DIM = 32


def dense_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, window: int | None
) -> torch.Tensor:
    """float64 softmax attention; q [Q, H, d] at the last Q positions of k/v [L, kvh, d]."""
    query_len, num_heads, _ = q.shape
    seq_len, num_kv_heads, _ = k.shape
    group = num_heads // num_kv_heads
    k = k.double().repeat_interleave(group, dim=1)
    v = v.double().repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q.double(), k) * scale
    q_pos = torch.arange(seq_len - query_len, seq_len)[:, None]
    k_pos = torch.arange(seq_len)[None, :]
    allowed = k_pos <= q_pos
    if window is not None:
        allowed &= k_pos > q_pos - window
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)


def run_case(
    seq_lens: list[int],
    query_lens: list[int],
    block_size: int,
    num_heads: int,
    num_kv_heads: int,
    dtype: torch.dtype,
    window: int | None = None,
    seed: int = 0,
    cpu_lists: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Write each sequence's whole context through write_kv, attend, return (out, ref)."""
    gen = torch.Generator().manual_seed(seed)
    blocks_needed = [math.ceil(s / block_size) for s in seq_lens]
    num_blocks = sum(blocks_needed) + 7
    perm = torch.randperm(num_blocks, generator=gen).tolist()  # non-contiguous tables
    tables, used = [], 0
    for n in blocks_needed:
        tables.append(perm[used : used + n])
        used += n
    kv_cache = torch.zeros(2, num_blocks, block_size, num_kv_heads, HEAD_DIM, dtype=dtype)
    backend = TorchAttentionBackend()
    keys = [torch.randn(s, num_kv_heads, HEAD_DIM, generator=gen).to(dtype) for s in seq_lens]
    values = [torch.randn(s, num_kv_heads, HEAD_DIM, generator=gen).to(dtype) for s in seq_lens]
    # Whole context written as if prefilled (metadata with query_len == seq_len).
    full = build_metadata(seq_lens, seq_lens, tables, block_size)
    backend.write_kv(torch.cat(keys), torch.cat(values), kv_cache, full.slot_mapping)

    metadata = build_metadata(query_lens, seq_lens, tables, block_size)
    if not cpu_lists:  # a runner that only fills the device tensors
        metadata.seq_lens_cpu = metadata.query_lens_cpu = None
    queries = [torch.randn(q, num_heads, HEAD_DIM, generator=gen).to(dtype) for q in query_lens]
    scale = HEAD_DIM**-0.5
    out = backend.forward(torch.cat(queries), kv_cache, metadata, scale, sliding_window=window)
    ref = torch.cat(
        [
            dense_reference(q, k, v, scale, window)
            for q, k, v in zip(queries, keys, values, strict=True)
        ]
    )
    return out, ref


MIXED = [  # decodes first, then prefill chunks over cached prefixes and a fresh prompt
    ([1, 17, 300, 40, 129, 33], [1, 1, 1, 40, 5, 20]),
    ([64, 5], [1, 5]),
    ([257], [1]),
    ([90, 250], [90, 131]),
]


@pytest.mark.parametrize("block_size", [1, 16, 128])
@pytest.mark.parametrize("heads", [(4, 4), (6, 2), (8, 2)])
@pytest.mark.parametrize("case", range(len(MIXED)))
def test_paged_matches_dense_float32(block_size: int, heads: tuple[int, int], case: int) -> None:
    seq_lens, query_lens = MIXED[case]
    out, ref = run_case(seq_lens, query_lens, block_size, *heads, torch.float32, seed=case)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("block_size", [1, 16])
@pytest.mark.parametrize("heads", [(4, 4), (8, 2)])
def test_paged_matches_dense_bfloat16(block_size: int, heads: tuple[int, int]) -> None:
    seq_lens, query_lens = MIXED[0]
    out, ref = run_case(seq_lens, query_lens, block_size, *heads, torch.bfloat16)
    assert out.dtype == torch.bfloat16
    # bf16 output rounding is ~4e-3 relative; float32 softmax keeps us near that.
    torch.testing.assert_close(out.double(), ref, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("window", [1, 7, 64])
@pytest.mark.parametrize("block_size", [1, 16])
def test_sliding_window(window: int, block_size: int) -> None:
    seq_lens, query_lens = MIXED[0]
    out, ref = run_case(seq_lens, query_lens, block_size, 6, 2, torch.float32, window=window)
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=1e-4)
    # The window must actually change the result for long contexts.
    full, _ = run_case(seq_lens, query_lens, block_size, 6, 2, torch.float32)
    assert not torch.allclose(out, full, atol=1e-3)


def test_without_cpu_length_lists() -> None:
    seq_lens, query_lens = MIXED[0]
    out, ref = run_case(seq_lens, query_lens, 16, 6, 2, torch.float32, cpu_lists=False)
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=1e-4)


def test_write_kv_places_tokens_and_skips_negative_slots() -> None:
    block_size, kvh = 4, 2
    kv_cache = torch.zeros(2, 5, block_size, kvh, HEAD_DIM)
    key = torch.randn(3, kvh, HEAD_DIM)
    value = torch.randn(3, kvh, HEAD_DIM)
    slots = torch.tensor([9, -1, 2])
    TorchAttentionBackend().write_kv(key, value, kv_cache, slots)
    torch.testing.assert_close(kv_cache[0, 2, 1], key[0])
    torch.testing.assert_close(kv_cache[1, 2, 1], value[0])
    torch.testing.assert_close(kv_cache[0, 0, 2], key[2])
    assert int((kv_cache != 0).any(dim=(-1, -2)).sum()) == 4  # 2 tokens x (K, V)


def test_build_metadata_layout() -> None:
    md = build_metadata([1, 1, 3], [5, 2, 7], [[3, 1], [4], [0, 2]], block_size=4)
    assert md.num_decodes == 2 and md.num_prefills == 1 and md.num_decode_tokens == 2
    # seq 0 token 4 -> block 1 (phys 1) offset 0; seq 1 token 1 -> phys 4 offset 1;
    # seq 2 tokens 4,5,6 -> phys 2 offsets 0..2
    assert md.slot_mapping.tolist() == [4, 17, 8, 9, 10]
    assert md.block_tables.tolist() == [[3, 1], [4, 0], [0, 2]]
    assert md.query_start_loc.tolist() == [0, 1, 2, 5]
    assert md.max_query_len == 3 and md.max_seq_len == 7
    assert md.seq_lens.dtype == torch.int32 and md.slot_mapping.dtype == torch.int64


def test_decode_rows_grouped_by_length_match_dense() -> None:
    # nine decodes of very different lengths: attended in length groups, results in row order
    seq_lens = [7, 300, 45, 290, 3, 160, 151, 40, 299]
    out, ref = run_case(seq_lens, [1] * len(seq_lens), 16, 6, 2, torch.float32, seed=3)
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=1e-4)
    backend = TorchAttentionBackend()
    metadata = build_metadata([1] * len(seq_lens), seq_lens, [[0] * 19] * len(seq_lens), 16)
    groups = backend._decode_groups(metadata)  # noqa: SLF001 - the grouping is the point
    assert 1 < len(groups) <= 4
    rows = sorted(i for index, _ in groups for i in index.tolist())
    assert rows == list(range(len(seq_lens)))  # every row in exactly one group
    for index, max_len in groups:
        lens = [seq_lens[i] for i in index.tolist()]
        assert max(lens) == max_len
