"""This process's place in the tensor-parallel group.

One process per rank. The defaults (rank 0 of 1, no group) mean "no tensor parallelism": every
sharded layer then holds the whole weight and no collective runs, so the tp=1 path is the plain
single-device model. Layers read the state when they are built, so it must be set (by
``init_tensor_parallel``) before the model is constructed.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(slots=True)
class _TPState:
    rank: int = 0
    world_size: int = 1
    backend: str | None = None
    owns_default_group: bool = False  # we created torch.distributed's default group


_STATE = _TPState()


def get_tp_rank() -> int:
    """This process's tensor-parallel rank (0 without tensor parallelism)."""
    return _STATE.rank


def get_tp_size() -> int:
    """How many ranks split each layer (1 without tensor parallelism)."""
    return _STATE.world_size


def get_tp_group() -> dist.ProcessGroup | None:
    """The process group collectives run on (None: torch.distributed's default group)."""
    return None


def tp_is_initialized() -> bool:
    return _STATE.world_size > 1


def default_backend(device: torch.device) -> str:
    """NCCL between GPUs, gloo between CPU processes."""
    return "nccl" if device.type == "cuda" else "gloo"


def init_tensor_parallel(
    rank: int,
    world_size: int,
    init_method: str,
    backend: str,
    timeout_s: float | None = None,
) -> None:
    """Join the group of ``world_size`` ranks at ``init_method`` (``tcp://host:port``).

    Blocks until every rank has joined. With NCCL, multicast (NVLS) is switched off: it is
    never used by this project (see docs/parallelism.md).
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a group of {world_size}")
    if world_size == 1:
        _STATE.rank, _STATE.world_size, _STATE.backend = 0, 1, None
        return
    if dist.is_initialized():
        raise RuntimeError(
            "torch.distributed is already initialized in this process (another engine with "
            "tensor_parallel_size > 1 still open, or a torchrun launch): close that engine first"
        )
    if backend == "nccl":
        os.environ["NCCL_NVLS_ENABLE"] = "0"
    if timeout_s is None:
        timeout_s = float(os.environ.get("PAGEDLLM_TP_TIMEOUT_S", "600"))
    dist.init_process_group(
        backend=backend,
        init_method=init_method,
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    _STATE.rank, _STATE.world_size, _STATE.backend = rank, world_size, backend
    _STATE.owns_default_group = True


def destroy_tensor_parallel() -> None:
    """Leave the group (if this module joined one) and return to the tp=1 defaults."""
    if _STATE.owns_default_group and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - a dead peer must not stop the clean-up
            pass
    _STATE.rank, _STATE.world_size, _STATE.backend = 0, 1, None
    _STATE.owns_default_group = False
