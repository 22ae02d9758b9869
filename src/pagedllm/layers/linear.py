"""Linear layers whose weights may be stacked from several checkpoint tensors.

``MergedLinear`` concatenates several projections along the output dimension (q/k/v into
``qkv_proj``, gate/up into ``gate_up_proj``) so one matmul does the work of several; its
``load_shard`` copies one checkpoint tensor into its slice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _param(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str) -> nn.Parameter:
    # Inference only: no autograd bookkeeping; values come from load_weights.
    return nn.Parameter(torch.empty(shape, dtype=dtype, device=device), requires_grad=False)


def copy_weight(param: torch.Tensor, loaded: torch.Tensor, name: str) -> None:
    """Copy a checkpoint tensor into ``param`` (cast to its dtype); ValueError on shape."""
    if tuple(param.shape) != tuple(loaded.shape):
        raise ValueError(
            f"weight {name!r}: checkpoint shape {tuple(loaded.shape)} does not match the "
            f"model's {tuple(param.shape)}; check the config matches the weights"
        )
    with torch.no_grad():
        param.copy_(loaded.to(dtype=param.dtype))


class Linear(nn.Module):
    """``y = x W^T (+ b)`` with ``W`` of shape ``[out_features, in_features]``."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = _param((out_features, in_features), dtype, device)
        self.bias = _param((out_features,), dtype, device) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class MergedLinear(Linear):
    """Several projections of the same input stacked along the output dimension."""

    def __init__(
        self,
        in_features: int,
        output_sizes: list[int],
        bias: bool = False,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(in_features, sum(output_sizes), bias, dtype, device)
        self.output_sizes = list(output_sizes)
        self.offsets = [sum(output_sizes[:i]) for i in range(len(output_sizes))]

    @property
    def num_shards(self) -> int:
        return len(self.output_sizes)

    def load_shard(self, param_name: str, shard: int, loaded: torch.Tensor, name: str) -> None:
        """Copy checkpoint tensor ``loaded`` into shard ``shard`` of ``weight`` or ``bias``."""
        param = getattr(self, param_name)
        lo = self.offsets[shard]
        copy_weight(param[lo : lo + self.output_sizes[shard]], loaded, name)
