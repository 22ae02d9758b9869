"""reshape_and_cache: K/V rows land in exactly their slots; negative slots write nothing."""

from __future__ import annotations

import pytest
import torch

from kernel_utils import torch_backend_or_none
from pagedllm.kernels import reshape_and_cache


@pytest.mark.parametrize(
    "block_size,num_kv_heads,head_dim,dtype",
    [
        (8, 2, 64, torch.float32),
        (16, 3, 64, torch.bfloat16),  # a non-power-of-two head count is padded and masked
        (32, 8, 128, torch.bfloat16),
        (128, 1, 128, torch.float16),
    ],
)
def test_writes_slots_and_skips_padding(
    device: torch.device, block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype
) -> None:
    gen = torch.Generator().manual_seed(1)
    num_blocks, num_tokens, num_heads = 6, 21, 2 * num_kv_heads
    # K and V as strided views into a fused qkv projection, as a model produces them.
    qkv = torch.randn(num_tokens, (num_heads + 2 * num_kv_heads) * head_dim, generator=gen)
    qkv = qkv.to(dtype).to(device)
    kv_width = num_kv_heads * head_dim
    key = qkv[:, num_heads * head_dim :][:, :kv_width].view(num_tokens, num_kv_heads, head_dim)
    value = qkv[:, num_heads * head_dim + kv_width :].view(num_tokens, num_kv_heads, head_dim)
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:num_tokens]
    slots[[3, 10]] = -1  # CUDA-graph padding rows
    slots = slots.to(device)
    cache = torch.full(
        (2, num_blocks, block_size, num_kv_heads, head_dim), float("nan"), dtype=dtype
    ).to(device)

    reshape_and_cache(key, value, cache, slots)

    flat = cache.view(2, -1, num_kv_heads, head_dim)
    keep = slots >= 0
    torch.testing.assert_close(flat[0, slots[keep]], key[keep], atol=0, rtol=0)
    torch.testing.assert_close(flat[1, slots[keep]], value[keep], atol=0, rtol=0)
    untouched = torch.ones(flat.shape[1], dtype=torch.bool, device=device)
    untouched[slots[keep]] = False
    assert torch.isnan(flat[:, untouched].float()).all(), "a slot that was not named got written"

    oracle = torch_backend_or_none()
    if oracle is not None:
        expected = torch.full_like(cache, float("nan"))
        oracle.write_kv(key, value, expected, slots)
        torch.testing.assert_close(cache, expected, atol=0, rtol=0, equal_nan=True)


def test_rejects_mismatched_cache(device: torch.device) -> None:
    key = torch.zeros(2, 2, 64, device=device)
    cache = torch.zeros(2, 4, 16, 2, 32, device=device)
    with pytest.raises(ValueError, match="kv_cache"):
        reshape_and_cache(key, key, cache, torch.zeros(2, dtype=torch.int64, device=device))


def test_group_metadata_slot_rows_are_contiguous_and_strided_slots_are_refused(device):
    """Hybrid models build every group's slots in one numpy gather, which numpy returns
    column-major: each group's ``slot_mapping`` must still be a contiguous row (a stride-2
    view made the Triton write put Gemma's K/V into other tokens' slots), and the write
    kernel refuses a strided one instead of misreading it."""
    import numpy as np

    from pagedllm.attention.metadata import build_group_metadata
    from pagedllm.kernels import reshape_and_cache

    tables = np.array([[[3, 4, 5], [6, 7, 0]], [[0, 9, 10], [11, 12, 13]]], dtype=np.int32)
    metas = build_group_metadata([5, 1], [9, 7], tables, 4, device)
    for g, meta in enumerate(metas):
        assert meta.slot_mapping.is_contiguous() and meta.block_tables.is_contiguous()
        positions = [4, 5, 6, 7, 8, 6]
        rows = [0] * 5 + [1]
        want = [int(tables[g, r, p // 4]) * 4 + p % 4 for r, p in zip(rows, positions, strict=True)]
        assert meta.slot_mapping.tolist() == want
    key = torch.randn(3, 2, 16, device=device)
    cache = torch.zeros(2, 8, 4, 2, 16, device=device)
    strided = torch.arange(6, device=device)[::2]
    with pytest.raises(ValueError, match="slot_mapping"):
        reshape_and_cache(key, key, cache, strided)
