"""The interface every attention backend implements (torch reference, Triton kernels)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch

from pagedllm.attention.metadata import AttentionMetadata


class AttentionBackend(ABC):
    """Writes new K/V into the paged cache and attends queries over it.

    KV cache layout per layer: ``[2, num_blocks, block_size, num_kv_heads, head_dim]``. An fp8
    cache (``attention/kv_quant.py``) comes with the layer's ``kv_scale`` (float32 ``[2]``: K and
    V scale): pages hold ``x / scale`` in e4m3, and attention reads ``page * scale``.
    """

    @abstractmethod
    def write_kv(
        self,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
        kv_scale: torch.Tensor | None = None,
    ) -> None:
        """Store ``key``/``value`` ``[T, kvh, d]`` at flat slots ``slot_mapping`` ``[T]``
        (rows whose slot is negative are skipped)."""

    @abstractmethod
    def forward(
        self,
        query: torch.Tensor,
        kv_cache: torch.Tensor,
        metadata: AttentionMetadata,
        scale: float,
        sliding_window: int | None = None,
        softcap: float | None = None,
        kv_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend ``query`` ``[T, num_heads, head_dim]`` over the paged context of each
        sequence (causal by position); returns ``[T, num_heads, head_dim]``.

        With ``sliding_window`` ``w`` a query at position p sees keys ``p - w + 1 .. p`` and
        never reads a page before that (its table slot may hold the null block). With
        ``softcap`` the scores are ``softcap * tanh(score / softcap)``."""

    def warm_up(  # noqa: B027 - optional hook, a no-op by default
        self,
        kv_cache: torch.Tensor,
        num_heads: int,
        dtype: torch.dtype,
        variants: Sequence[tuple[bool, float | None]] = ((False, None), (True, None)),
    ) -> None:
        """Compile whatever this backend would otherwise compile while serving (default: none).

        ``kv_cache`` is one layer's pages (only read); ``num_heads`` the query heads per rank;
        ``variants`` the model's attention kinds as (has a sliding window, soft-cap or None).
        """
