"""Whether a layer runs its fused Triton kernel (``pagedllm.kernels``) or its torch ops.

The fused kernels (RMSNorm with the residual add, Gemma's RMSNorm with the residual stream
around it, RoPE with Qwen3's / Gemma 3's q/k norm, SiLU- and GELU-and-mul)
replace chains of small memory-bound torch ops on the GPU. The torch code stays as the CPU path
and as the reference the kernels are tested against; ``PAGEDLLM_DISABLE_FUSED_KERNELS=1``
forces it on the GPU too, and ``=sampler,rotary`` (names from ``KERNELS``) only for those (to
compare the two in benchmarks). The kernel modules import
``triton``, so layers import them only inside their CUDA branch.
"""

from __future__ import annotations

import os

import torch

DISABLE_ENV = "PAGEDLLM_DISABLE_FUSED_KERNELS"


KERNELS = ("rmsnorm", "rotary", "silu_and_mul", "gelu_and_mul", "sampler")


def use_fused(x: torch.Tensor, kernel: str) -> bool:
    """True when ``x`` is on a CUDA device and the fused ``kernel`` (one of ``KERNELS``) is
    not disabled. ``PAGEDLLM_DISABLE_FUSED_KERNELS`` is ``1`` (all off) or a comma-separated
    list of kernel names.

    The environment is read on every call (cheap) so that it can be changed after import;
    under CUDA graphs the choice is fixed at capture.
    """
    if not x.is_cuda:
        return False
    disabled = os.environ.get(DISABLE_ENV, "")
    if not disabled or disabled == "0":
        return True
    names = {name.strip() for name in disabled.split(",")}
    return not (names & {"1", "all", kernel})
