"""Helpers shared by the fused-kernel tests: ulp-aware comparison, seeded inputs, and the
torch path of a layer on any device (the reference the kernels are checked against)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from pagedllm.layers import _fused


def _ulps(actual: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """Distance in units in the last place between two bf16 tensors (sign-aware)."""

    def ordered(t: torch.Tensor) -> torch.Tensor:
        bits = t.contiguous().view(torch.int16).to(torch.int32)
        return torch.where(bits < 0, -(bits & 0x7FFF), bits)

    return (ordered(actual) - ordered(expected)).abs()


def assert_matches(
    actual: torch.Tensor,
    expected: torch.Tensor,
    max_ulps: int = 0,
    bf16_atol: float | None = None,
    max_off: float = 0.02,
) -> None:
    """``max_ulps=0``: bit-exact. Else float32 within ~1e-6 relative, and bf16 at most
    ``max_ulps`` ulps (or ``bf16_atol`` absolute) off, on at most ``max_off`` of the elements
    (see test_kernel_fused.py's docstring for why)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    actual, expected = actual.cpu(), expected.cpu()
    if max_ulps == 0:
        torch.testing.assert_close(actual, expected, atol=0, rtol=0)
    elif actual.dtype == torch.float32:
        torch.testing.assert_close(actual, expected, atol=1e-6, rtol=2e-6)
    else:
        if bf16_atol is None:
            ulps = _ulps(actual, expected)
            assert ulps.max().item() <= max_ulps, f"{ulps.max().item()} bf16 ulps off"
        else:
            torch.testing.assert_close(actual, expected, atol=bf16_atol, rtol=0)
        off = (actual != expected).float().mean().item()
        assert off <= max_off, f"{off:.1%} of the elements differ"


def randn(gen: torch.Generator, *shape: int, scale: float = 1.0, shift: float = 0.0):
    return torch.randn(*shape, generator=gen) * scale + shift


def qkv_slices(gen, tokens, heads, kv_heads, head_dim, dtype, device):
    """q, k (and v) as column slices of one fused qkv output, as the model produces them."""
    qkv = randn(gen, tokens, (heads + 2 * kv_heads) * head_dim, scale=2.0).to(dtype).to(device)
    q_size, kv_size = heads * head_dim, kv_heads * head_dim
    return qkv, *qkv.split([q_size, kv_size, kv_size], dim=-1)


@contextlib.contextmanager
def torch_path() -> Iterator[None]:
    """Layers run their torch ops inside (on a GPU they would otherwise take the kernels)."""
    before = os.environ.get(_fused.DISABLE_ENV)
    os.environ[_fused.DISABLE_ENV] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ[_fused.DISABLE_ENV]
        else:
            os.environ[_fused.DISABLE_ENV] = before
