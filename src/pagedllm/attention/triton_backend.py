"""GPU attention backend: the Triton paged kernels behind the AttentionBackend interface.

Decode rows (the first ``num_decode_tokens`` rows) go to the split-context decode kernel, the
prefill chunks after them to the extend kernel. The decode path reads no device data on the
host and allocates only tensors whose shapes come from static sizes (``num_decodes``, the head
counts and the split count, itself derived from ``metadata.max_seq_len``), so a pure-decode
batch can be captured in a CUDA graph as long as the runner keeps ``max_seq_len`` fixed for the
captured graph.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pagedllm.attention.backend import AttentionBackend
from pagedllm.attention.kv_quant import default_kv_scale, is_fp8
from pagedllm.attention.metadata import AttentionMetadata
from pagedllm.kernels import (
    decode_split_variants,
    default_num_splits,
    paged_decode_attention,
    paged_extend_attention,
    reshape_and_cache,
)


class TritonAttentionBackend(AttentionBackend):
    """Paged attention with Triton kernels.

    Args:
        max_num_seqs: the most sequences in one batch (kept for the runner's sizing; split
            partials are sized per call from static shapes, so nothing is preallocated).
        max_model_len: upper bound on any sequence's length; caps the context length used to
            choose the decode split count (optional: ``metadata.max_seq_len`` alone otherwise).
        num_sms: streaming multiprocessors to fill; read from the device when ``None``.
        max_splits: most context partitions per sequence in decode (flash-decoding).
        decode_splits: force this split count (benchmarks, tests); ``None`` uses the heuristic.
    """

    def __init__(
        self,
        max_num_seqs: int | None = None,
        max_model_len: int | None = None,
        num_sms: int | None = None,
        max_splits: int = 64,
        decode_splits: int | None = None,
    ) -> None:
        if max_splits < 1:
            raise ValueError(f"max_splits must be >= 1, got {max_splits}")
        if decode_splits is not None and decode_splits < 1:
            raise ValueError(f"decode_splits must be >= 1 or None, got {decode_splits}")
        self.max_num_seqs = max_num_seqs
        self.max_model_len = max_model_len
        self.num_sms = num_sms
        self.max_splits = max_splits
        self.decode_splits = decode_splits
        self._sms_by_device: dict[torch.device, int] = {}

    def write_kv(
        self,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
        kv_scale: torch.Tensor | None = None,
    ) -> None:
        """Write ``key``/``value`` ``[T, kvh, d]`` into ``kv_cache`` pages; slot < 0 skips.

        An fp8 cache is quantized on write with ``kv_scale`` (``attention/kv_quant.py``)."""
        reshape_and_cache(key, value, kv_cache, slot_mapping, kv_scale)

    def num_splits(self, num_decodes: int, num_kv_heads: int, max_seq_len: int, device) -> int:
        """Decode split count for a batch (pure function of static sizes)."""
        if self.decode_splits is not None:
            return self.decode_splits
        if self.max_model_len is not None:
            max_seq_len = min(max_seq_len, self.max_model_len)
        return default_num_splits(
            num_decodes, num_kv_heads, max_seq_len, self._sm_count(device), self.max_splits
        )

    def warm_up(
        self,
        kv_cache: torch.Tensor,
        num_heads: int,
        dtype: torch.dtype,
        variants: Sequence[tuple[bool, float | None]] = ((False, None), (True, None)),
    ) -> None:
        """Compile the decode kernels for every split count the heuristic can pick, for each
        of the model's attention ``variants`` (has a window, soft-cap): each pair is a
        separate compiled kernel (Gemma 2's soft-capped layers included).

        Mixed batches run eagerly with a split count that follows their number of decode rows,
        so without this the first such batches would each wait for a compile. Reads block 0
        of ``kv_cache`` and writes nothing into it.
        """
        if self.decode_splits is not None:
            splits = [self.decode_splits]
        else:
            splits = decode_split_variants(self.max_splits)
        head_dim, device = kv_cache.shape[-1], kv_cache.device
        block_size = kv_cache.shape[2]
        query = torch.zeros(1, num_heads, head_dim, dtype=dtype, device=device)
        tables = torch.zeros(1, 1, dtype=torch.int32, device=device)
        seq_lens = torch.full((1,), block_size, dtype=torch.int32, device=device)
        # an fp8 cache is read with its layer's scales: the variant with a scale pointer
        kv_scale = default_kv_scale(device) if is_fp8(kv_cache.dtype) else None
        for windowed, softcap in dict.fromkeys(variants):
            for n in splits:
                paged_decode_attention(
                    query, kv_cache, tables, seq_lens, 1.0, num_splits=n,
                    sliding_window=block_size if windowed else None, softcap=softcap,
                    kv_scale=kv_scale,
                )  # fmt: skip

    def _sm_count(self, device: torch.device) -> int:
        if self.num_sms is not None:
            return self.num_sms
        if device not in self._sms_by_device:
            if device.type == "cuda":
                props = torch.cuda.get_device_properties(device)
                self._sms_by_device[device] = props.multi_processor_count
            else:
                self._sms_by_device[device] = 1  # interpreter: splitting buys nothing
        return self._sms_by_device[device]

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
        """Paged attention for a flat batch: ``query`` ``[T, H, d]`` -> ``[T, H, d]``.

        K/V of this step's tokens must already be in ``kv_cache`` (``write_kv``).
        """
        if query.dim() != 3:
            raise ValueError(f"query must be [tokens, heads, head_dim], got {tuple(query.shape)}")
        num_heads, head_dim = query.shape[1], query.shape[2]
        num_kv_heads = kv_cache.shape[3]
        if num_heads % num_kv_heads or kv_cache.shape[4] != head_dim:
            raise ValueError(
                f"query heads {num_heads} x {head_dim} do not fit kv_cache {tuple(kv_cache.shape)}"
            )
        if head_dim & (head_dim - 1) or head_dim < 16:
            raise ValueError(f"head_dim must be a power of two >= 16, got {head_dim}")
        if query.stride(-1) != 1:  # kernels load head rows as contiguous vectors
            query = query.contiguous()
        out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
        num_decodes = metadata.num_decode_tokens
        if num_decodes > 0:
            splits = self.num_splits(num_decodes, num_kv_heads, metadata.max_seq_len, query.device)
            paged_decode_attention(
                query[:num_decodes],
                kv_cache,
                metadata.block_tables,
                metadata.seq_lens,
                scale,
                num_splits=splits,
                sliding_window=sliding_window,
                out=out[:num_decodes],
                softcap=softcap,
                kv_scale=kv_scale,
            )
        num_prefills = metadata.num_seqs - metadata.num_decodes
        if num_prefills > 0:
            paged_extend_attention(
                query,
                kv_cache,
                metadata.block_tables,
                metadata.seq_lens,
                metadata.query_start_loc,
                scale,
                max_query_len=metadata.max_query_len,
                seq_offset=metadata.num_decodes,
                num_seqs=num_prefills,
                sliding_window=sliding_window,
                out=out,
                softcap=softcap,
                kv_scale=kv_scale,
            )
        return out
