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
