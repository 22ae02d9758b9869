"""Triton kernels for the paged KV cache.

- ``reshape_and_cache``: write new K/V rows into their pages by slot.
- ``paged_decode_attention``: one query per sequence, GQA-grouped, split along the context.
- ``paged_extend_attention``: chunked prefill over a cached prefix (causal by position).

Importing this package imports ``triton``; on a machine without a GPU set
``TRITON_INTERPRET=1`` *before* the import to run the kernels in the interpreter.
"""

from __future__ import annotations

from pagedllm.kernels.paged_decode import (
    decode_split_variants,
    default_num_splits,
    paged_decode_attention,
)
from pagedllm.kernels.paged_extend import paged_extend_attention
from pagedllm.kernels.reshape_and_cache import reshape_and_cache

__all__ = [
    "decode_split_variants",
    "default_num_splits",
    "paged_decode_attention",
    "paged_extend_attention",
    "reshape_and_cache",
]
