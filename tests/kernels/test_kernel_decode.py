"""Paged decode kernel vs a dense float32 reference (and the torch backend when present)."""

from __future__ import annotations

import pytest
import torch

from kernel_utils import dense_reference, make_paged_case, tolerance
from pagedllm.kernels import decode_split_variants, default_num_splits, paged_decode_attention

F32, BF16 = torch.float32, torch.bfloat16
NUM_KV_HEADS = 2
LENS = [1, 9, 40, 130, 77]  # mixed: one token, partial pages, several tiles

CASES = [
    # (block_size, group, head_dim, dtype, num_splits)
    *[(bs, g, 64, F32, 1) for bs in (8, 16, 32, 128) for g in (1, 4, 8)],
    (16, 4, 128, BF16, 1),
    (8, 8, 128, BF16, 4),
    (32, 1, 128, BF16, 2),
    (128, 4, 64, BF16, 3),
    (16, 4, 64, F32, 2),
    (16, 4, 64, F32, 7),  # more splits than some sequences have keys: empty partitions
    (8, 1, 128, F32, 16),
]


def _check(case, query, out, scale, dtype, sliding_window=None) -> None:
    for i in range(query.shape[0]):
        ref = dense_reference(
            query[i : i + 1], case.keys[i], case.values[i], scale, sliding_window
        )[0]
        torch.testing.assert_close(out[i].float(), ref, **tolerance(dtype))


@pytest.mark.parametrize("block_size,group,head_dim,dtype,num_splits", CASES)
def test_decode_matches_dense(
    device: torch.device,
    block_size: int,
    group: int,
    head_dim: int,
    dtype: torch.dtype,
    num_splits: int,
) -> None:
    case = make_paged_case(LENS, block_size, NUM_KV_HEADS, head_dim, dtype, device, seed=block_size)
    gen = torch.Generator().manual_seed(7)
    query = torch.randn(len(LENS), NUM_KV_HEADS * group, head_dim, generator=gen)
    query = query.to(dtype).to(device)
    scale = head_dim**-0.5
    out = torch.full_like(query, float("nan"))  # unwritten rows would stay NaN and fail
    paged_decode_attention(
        query, case.kv_cache, case.block_tables, case.seq_lens, scale, num_splits, out=out
    )
    _check(case, query, out, scale, dtype)


@pytest.mark.parametrize("num_splits", [1, 3])
def test_decode_sliding_window(device: torch.device, num_splits: int) -> None:
    case = make_paged_case(LENS, 16, NUM_KV_HEADS, 64, F32, device, seed=3)
    query = torch.randn(len(LENS), 8, 64, generator=torch.Generator().manual_seed(2)).to(device)
    out = torch.full_like(query, float("nan"))
    paged_decode_attention(
        query,
        case.kv_cache,
        case.block_tables,
        case.seq_lens,
        0.125,
        num_splits,
        sliding_window=20,
        out=out,
    )
    _check(case, query, out, 0.125, F32, sliding_window=20)


@pytest.mark.parametrize("num_splits", [1, 4])
def test_empty_padding_rows_come_out_finite(device: torch.device, num_splits: int) -> None:
    """CUDA-graph padding rows (seq_len 0) must not produce NaN/inf, nor disturb real rows."""
    case = make_paged_case([33, 0, 5], 16, NUM_KV_HEADS, 64, F32, device)
    query = torch.randn(3, 4, 64, generator=torch.Generator().manual_seed(5)).to(device)
    out = torch.full_like(query, float("nan"))
    paged_decode_attention(
        query, case.kv_cache, case.block_tables, case.seq_lens, 0.125, num_splits, out=out
    )
    assert torch.isfinite(out).all()
    for i in (0, 2):
        ref = dense_reference(query[i : i + 1], case.keys[i], case.values[i], 0.125)[0]
        torch.testing.assert_close(out[i], ref, **tolerance(F32))


def test_split_heuristic() -> None:
    # Many programs already: no split. Few long sequences: split up to the cap.
    assert default_num_splits(64, 8, 2048, 132) == 1
    # 32 programs < 132 SMs: 4 per SM wanted (17), rounded down to a power of two
    assert default_num_splits(4, 8, 16384, 132) == 16
    assert default_num_splits(8, 8, 32000, 132) == 8
    assert default_num_splits(1, 8, 128000, 132) == 64  # capped
    assert default_num_splits(32, 8, 4096, 132) == 2  # 256 programs fill the SMs: 2 per SM
    assert default_num_splits(4, 8, 16384, 132, max_splits=8) == 8
    assert default_num_splits(1, 1, 300, 132) == 1  # too short to be worth a reduce pass


def test_split_counts_are_the_warmed_up_variants() -> None:
    variants = set(decode_split_variants(64))
    assert variants == {1, 2, 4, 8, 16, 32, 64}
    for seqs in range(1, 300, 7):
        for ctx in (17, 300, 2048, 32000, 131072):
            assert default_num_splits(seqs, 8, ctx, 132) in variants
            assert default_num_splits(seqs, 2, ctx, 78, max_splits=16) in decode_split_variants(16)


@pytest.mark.gpu
def test_decode_real_size(device: torch.device) -> None:
    if device.type != "cuda":
        pytest.skip("real-size test needs a CUDA device")
    lens = torch.randint(1, 3000, (24,), generator=torch.Generator().manual_seed(0)).tolist()
    case = make_paged_case(lens, 16, 8, 128, BF16, device)
    query = torch.randn(len(lens), 32, 128, device=device, dtype=BF16)
    for splits in (1, 5):
        out = torch.full_like(query, float("nan"))
        paged_decode_attention(
            query, case.kv_cache, case.block_tables, case.seq_lens, 128**-0.5, splits, out=out
        )
        _check(case, query, out, 128**-0.5, BF16)
