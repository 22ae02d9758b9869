"""Tensor parallelism: process-group state, collectives, and how weights are split.

``state`` holds this process's rank and world size (1 and 0 when tensor parallelism is off,
so every layer falls back to its single-device behaviour); ``comm`` wraps the collectives the
sharded layers use; ``sharding`` validates a model's head counts against the world size and
computes each rank's slice; ``protocol`` is how the driver (rank 0) asks the other ranks to
join its LM-head calls. See docs/parallelism.md.
"""

from __future__ import annotations

from .sharding import (
    check_tensor_parallel,
    kv_head_range,
    local_num_kv_heads,
    vocab_range,
)
from .state import (
    destroy_tensor_parallel,
    get_tp_group,
    get_tp_rank,
    get_tp_size,
    init_tensor_parallel,
    tp_is_initialized,
)

__all__ = [
    "check_tensor_parallel",
    "destroy_tensor_parallel",
    "get_tp_group",
    "get_tp_rank",
    "get_tp_size",
    "init_tensor_parallel",
    "kv_head_range",
    "local_num_kv_heads",
    "tp_is_initialized",
    "vocab_range",
]
