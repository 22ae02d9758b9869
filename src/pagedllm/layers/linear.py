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


# ------------------------------------------------------------------ tensor parallelism
# Megatron-style sharding (docs/parallelism.md). Each class holds only this rank's slice and
# takes it from the full checkpoint tensor while loading. At tp=1 the slice is the whole weight,
# no collective runs, and the forward is the parent's: the single-device path is unchanged.


def _tp(tp_rank: int | None, tp_size: int | None) -> tuple[int, int]:
    from pagedllm.parallel.state import get_tp_rank, get_tp_size

    return (get_tp_rank() if tp_rank is None else tp_rank), (
        get_tp_size() if tp_size is None else tp_size
    )


class ColumnParallelLinear(MergedLinear):
    """Merged projections split along the output dimension; no communication in forward.

    ``full_sizes`` are the checkpoint's output sizes; ``local_sizes``/``starts`` say which rows
    of each this rank keeps (even splits unless a subclass says otherwise).
    """

    def __init__(
        self,
        in_features: int,
        full_sizes: list[int],
        bias: bool = False,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        *,
        tp_rank: int | None = None,
        tp_size: int | None = None,
        local_sizes: list[int] | None = None,
        starts: list[int] | None = None,
    ) -> None:
        rank, size = _tp(tp_rank, tp_size)
        if local_sizes is None:
            for full in full_sizes:
                if full % size != 0:
                    raise ValueError(
                        f"output size {full} cannot be split over tensor_parallel_size={size}"
                    )
            local_sizes = [full // size for full in full_sizes]
            starts = [rank * local for local in local_sizes]
        super().__init__(in_features, local_sizes, bias, dtype, device)
        self.full_sizes = list(full_sizes)
        self.starts = list(starts or [0] * len(local_sizes))
        self.tp_rank, self.tp_size = rank, size

    def load_shard(self, param_name: str, shard: int, loaded: torch.Tensor, name: str) -> None:
        if loaded.shape[0] != self.full_sizes[shard]:
            raise ValueError(
                f"weight {name!r}: checkpoint has {loaded.shape[0]} output rows, the model "
                f"expects {self.full_sizes[shard]}; check the config matches the weights"
            )
        piece = loaded.narrow(0, self.starts[shard], self.output_sizes[shard])
        super().load_shard(param_name, shard, piece, name)


class QKVParallelLinear(ColumnParallelLinear):
    """q/k/v merged; each rank keeps its q heads and its kv heads (replicated when there
    are fewer kv heads than ranks; see parallel/sharding.py)."""

    def __init__(
        self,
        hidden_size: int,
        head_dim: int,
        num_heads: int,
        num_kv_heads: int,
        bias: bool = False,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        *,
        tp_rank: int | None = None,
        tp_size: int | None = None,
    ) -> None:
        from pagedllm.parallel.sharding import check_heads, kv_head_range

        rank, size = _tp(tp_rank, tp_size)
        check_heads(num_heads, num_kv_heads, size)
        q_local = num_heads // size * head_dim
        kv_lo, kv_hi = kv_head_range(num_kv_heads, rank, size)
        kv_local = (kv_hi - kv_lo) * head_dim
        super().__init__(
            hidden_size,
            [num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim],
            bias,
            dtype,
            device,
            tp_rank=rank,
            tp_size=size,
            local_sizes=[q_local, kv_local, kv_local],
            starts=[rank * q_local, kv_lo * head_dim, kv_lo * head_dim],
        )


class RowParallelLinear(Linear):
    """Split along the input dimension; partial outputs are summed over ranks (all-reduce).

    The bias is added once, after the sum.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        *,
        tp_rank: int | None = None,
        tp_size: int | None = None,
    ) -> None:
        rank, size = _tp(tp_rank, tp_size)
        if in_features % size != 0:
            raise ValueError(
                f"input size {in_features} cannot be split over tensor_parallel_size={size}"
            )
        super().__init__(in_features // size, out_features, bias, dtype, device)
        self.full_in_features = in_features
        self.tp_rank, self.tp_size = rank, size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return super().forward(x)
        from pagedllm.parallel.comm import tp_all_reduce

        out = tp_all_reduce(F.linear(x, self.weight))
        return out if self.bias is None else out + self.bias

    def load_weight(self, param_name: str, loaded: torch.Tensor, name: str) -> None:
        """Copy this rank's columns of the full checkpoint tensor (the bias whole)."""
        param = getattr(self, param_name)
        if param_name == "weight" and self.tp_size > 1:
            if loaded.ndim != 2 or loaded.shape[1] != self.full_in_features:
                raise ValueError(
                    f"weight {name!r}: checkpoint shape {tuple(loaded.shape)} does not have "
                    f"{self.full_in_features} input columns; check the config matches the weights"
                )
            loaded = loaded.narrow(1, self.tp_rank * self.in_features, self.in_features)
        copy_weight(param, loaded, name)
