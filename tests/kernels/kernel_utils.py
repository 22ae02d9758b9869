"""Builders for paged-KV test cases and a dense attention reference.

Each case starts from dense per-sequence K/V (the ground truth), scatters them into a KV cache
through a random, non-contiguous block table, and fills every other page with noise, so a kernel
that reads the wrong page, offset or head shows up as a numeric mismatch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pagedllm.attention.metadata import AttentionMetadata


@dataclass
class PagedCase:
    kv_cache: torch.Tensor  # [2, num_blocks, block_size, kvh, d]
    block_tables: torch.Tensor  # [num_seqs, max_blocks] int32
    seq_lens: torch.Tensor  # [num_seqs] int32
    keys: list[torch.Tensor]  # per sequence [seq_len, kvh, d]
    values: list[torch.Tensor]
    block_size: int


def make_paged_case(
    seq_lens: list[int],
    block_size: int,
    num_kv_heads: int,
    head_dim: int,
    dtype: torch.dtype,
    device: torch.device,
    seed: int = 0,
    spare_blocks: int = 3,
) -> PagedCase:
    """Random K/V for each sequence, stored in randomly permuted pages of a noisy cache."""
    gen = torch.Generator().manual_seed(seed)
    pages = [-(-n // block_size) for n in seq_lens]
    num_blocks = sum(pages) + spare_blocks
    max_pages = max(max(pages), 1)
    kv_cache = torch.randn(2, num_blocks, block_size, num_kv_heads, head_dim, generator=gen)
    kv_cache = (kv_cache * 3.0).to(dtype)  # noise: larger than real rows so misreads stand out
    perm = torch.randperm(num_blocks, generator=gen).tolist()
    block_tables = torch.zeros(len(seq_lens), max_pages, dtype=torch.int32)
    keys, values = [], []
    for i, n in enumerate(seq_lens):
        ids = [perm.pop() for _ in range(pages[i])]
        block_tables[i, : len(ids)] = torch.tensor(ids, dtype=torch.int32)
        k = torch.randn(n, num_kv_heads, head_dim, generator=gen).to(dtype)
        v = torch.randn(n, num_kv_heads, head_dim, generator=gen).to(dtype)
        pos = torch.arange(n)
        slots = torch.tensor(ids, dtype=torch.int64)[pos // block_size] * block_size
        slots += pos % block_size
        flat = kv_cache.view(2, -1, num_kv_heads, head_dim)
        flat[0, slots] = k
        flat[1, slots] = v
        keys.append(k.to(device))
        values.append(v.to(device))
    return PagedCase(
        kv_cache=kv_cache.to(device),
        block_tables=block_tables.to(device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        keys=keys,
        values=values,
        block_size=block_size,
    )


def dense_reference(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """float32 SDPA of ``query`` ``[Q, H, d]`` (the last Q positions) over ``[L, kvh, d]``."""
    q_len, num_heads, _ = query.shape
    seq_len, num_kv_heads, _ = key.shape
    group = num_heads // num_kv_heads
    q = query.float().transpose(0, 1)
    k = key.float().repeat_interleave(group, dim=1).transpose(0, 1)
    v = value.float().repeat_interleave(group, dim=1).transpose(0, 1)
    q_pos = torch.arange(seq_len - q_len, seq_len, device=query.device)[:, None]
    k_pos = torch.arange(seq_len, device=query.device)[None, :]
    mask = k_pos <= q_pos
    if sliding_window is not None:
        mask &= k_pos > q_pos - sliding_window
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return out.transpose(0, 1)


def make_metadata(
    case: PagedCase, query_lens: list[int], num_decodes: int, slot_mapping: torch.Tensor
) -> AttentionMetadata:
    """AttentionMetadata for ``case`` with decodes first, as the model runner lays it out."""
    device = case.seq_lens.device
    qsl = [0]
    for n in query_lens:
        qsl.append(qsl[-1] + n)
    seq_lens_cpu = case.seq_lens.tolist()
    return AttentionMetadata(
        slot_mapping=slot_mapping,
        block_tables=case.block_tables,
        seq_lens=case.seq_lens,
        query_start_loc=torch.tensor(qsl, dtype=torch.int32, device=device),
        max_query_len=max(query_lens),
        max_seq_len=max(seq_lens_cpu),
        num_decodes=num_decodes,
        num_decode_tokens=num_decodes,
        block_size=case.block_size,
        seq_lens_cpu=seq_lens_cpu,
        query_lens_cpu=list(query_lens),
    )


def tolerance(dtype: torch.dtype) -> dict[str, float]:
    """assert_close tolerances vs a float32 reference on the same (rounded) inputs."""
    if dtype == torch.float32:
        return {"atol": 2e-4, "rtol": 2e-4}
    return {"atol": 2.5e-2, "rtol": 2.5e-2}


def torch_backend_or_none():
    """The TorchAttentionBackend oracle, or None while it does not exist yet."""
    try:
        from pagedllm.attention.torch_backend import TorchAttentionBackend
    except ImportError:
        return None
    return TorchAttentionBackend()
