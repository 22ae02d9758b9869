"""The collectives the sharded layers use; each is a no-op (or identity) at tp=1."""

from __future__ import annotations

import torch
import torch.distributed as dist

from .state import get_tp_group, get_tp_size


def tp_all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sum ``x`` over the ranks, in place; returns ``x``."""
    if get_tp_size() > 1:
        dist.all_reduce(x, group=get_tp_group())
    return x


def tp_all_gather(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Concatenate every rank's ``x`` (same shape on all ranks) along ``dim``, rank order."""
    world = get_tp_size()
    if world == 1:
        return x
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x, group=get_tp_group())
    return torch.cat(parts, dim=dim)


def tp_broadcast(x: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite ``x`` on every rank with rank ``src``'s ``x``; returns ``x``."""
    if get_tp_size() > 1:
        dist.broadcast(x, src=src, group=get_tp_group())
    return x
