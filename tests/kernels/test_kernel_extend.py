"""Paged extend (chunked prefill) kernel vs a dense float32 causal reference."""

from __future__ import annotations

import pytest
import torch

from kernel_utils import dense_reference, make_paged_case, tolerance
from pagedllm.kernels import paged_extend_attention

F32, BF16 = torch.float32, torch.bfloat16
NUM_KV_HEADS = 2
# (seq_len, query_len): whole prompt, chunk over a prefix, one-token chunk, ragged tiles
SEQS = [(37, 37), (50, 13), (100, 1), (90, 70), (8, 3)]

CASES = [
    # (block_size, group, head_dim, dtype)
    (8, 1, 64, F32),
    (16, 4, 64, F32),
    (32, 8, 64, F32),
    (128, 4, 64, F32),
    (16, 1, 128, BF16),
    (8, 4, 128, BF16),
    (32, 8, 128, BF16),
]


def _run(device, seqs, block_size, group, head_dim, dtype, seq_offset=0, sliding_window=None,
         pack_gqa=None):  # fmt: skip
    seq_lens = [s for s, _ in seqs]
    query_lens = [q for _, q in seqs]
    case = make_paged_case(seq_lens, block_size, NUM_KV_HEADS, head_dim, dtype, device, seed=11)
    gen = torch.Generator().manual_seed(3)
    query = torch.randn(sum(query_lens), NUM_KV_HEADS * group, head_dim, generator=gen)
    query = query.to(dtype).to(device)
    qsl = torch.tensor([0, *torch.tensor(query_lens).cumsum(0).tolist()], dtype=torch.int32)
    out = torch.full_like(query, float("nan"))
    scale = head_dim**-0.5
    paged_extend_attention(
        query,
        case.kv_cache,
        case.block_tables,
        case.seq_lens,
        qsl.to(device),
        scale,
        max_query_len=max(query_lens[seq_offset:]),
        seq_offset=seq_offset,
        sliding_window=sliding_window,
        out=out,
        pack_gqa=pack_gqa,
    )
    return case, query, out, qsl.tolist(), scale


@pytest.mark.parametrize("block_size,group,head_dim,dtype", CASES)
def test_extend_matches_dense(
    device: torch.device, block_size: int, group: int, head_dim: int, dtype: torch.dtype
) -> None:
    case, query, out, qsl, scale = _run(device, SEQS, block_size, group, head_dim, dtype)
    for i in range(len(SEQS)):
        rows = slice(qsl[i], qsl[i + 1])
        ref = dense_reference(query[rows], case.keys[i], case.values[i], scale)
        torch.testing.assert_close(out[rows].float(), ref, **tolerance(dtype))


def test_extend_skips_leading_sequences(device: torch.device) -> None:
    """With seq_offset the first sequences (the decodes) are left alone."""
    seqs = [(20, 1), (41, 1), *SEQS[:3]]
    case, query, out, qsl, scale = _run(device, seqs, 16, 4, 64, F32, seq_offset=2)
    assert torch.isnan(out[: qsl[2]]).all(), "rows of sequences before seq_offset were written"
    for i in range(2, len(seqs)):
        rows = slice(qsl[i], qsl[i + 1])
        ref = dense_reference(query[rows], case.keys[i], case.values[i], scale)
        torch.testing.assert_close(out[rows], ref, **tolerance(F32))


@pytest.mark.parametrize("group,pack_gqa", [(4, False), (4, True), (2, True)])
def test_extend_gqa_packing(device: torch.device, group: int, pack_gqa: bool | None) -> None:
    """Query heads of one KV head packed into one tile (`pack_gqa=True`) or one head per tile (the default):
    both equal the dense reference, causal and with a window."""
    for window in (None, 16):
        case, query, out, qsl, scale = _run(device, SEQS, 16, group, 64, F32,
                                            sliding_window=window, pack_gqa=pack_gqa)  # fmt: skip
        for i in range(len(SEQS)):
            rows = slice(qsl[i], qsl[i + 1])
            ref = dense_reference(query[rows], case.keys[i], case.values[i], scale, window)
            torch.testing.assert_close(out[rows], ref, **tolerance(F32))


@pytest.mark.parametrize("window", [1, 16, 45])
def test_extend_sliding_window(device: torch.device, window: int) -> None:
    case, query, out, qsl, scale = _run(device, SEQS, 8, 4, 64, F32, sliding_window=window,
                                        pack_gqa=True)  # fmt: skip
    for i in range(len(SEQS)):
        rows = slice(qsl[i], qsl[i + 1])
        ref = dense_reference(query[rows], case.keys[i], case.values[i], scale, window)
        torch.testing.assert_close(out[rows], ref, **tolerance(F32))


@pytest.mark.gpu
def test_extend_real_size(device: torch.device) -> None:
    if device.type != "cuda":
        pytest.skip("real-size test needs a CUDA device")
    seqs = [(1024, 1024), (2048, 1024), (700, 300), (4000, 1)]
    for head_dim in (64, 128):
        case, query, out, qsl, scale = _run(device, [*seqs], 16, 4, head_dim, BF16)
        for i in range(len(seqs)):
            rows = slice(qsl[i], qsl[i + 1])
            ref = dense_reference(query[rows], case.keys[i], case.values[i], scale)
            torch.testing.assert_close(out[rows].float(), ref, **tolerance(BF16))
