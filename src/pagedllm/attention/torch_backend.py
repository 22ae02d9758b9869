"""Pure PyTorch paged attention: the CPU fast path and the correctness oracle for GPU kernels.

Decode rows (the first ``num_decodes`` sequences, one query each) are handled in one batch:
the pages of every decode sequence are gathered with a single index op into a padded
``[B, max_len, kvh, d]`` tensor and attended with one masked SDPA call, so the cost does not
grow with a Python loop over requests. Prefill chunks (queries at the last ``query_len``
positions of a ``seq_len`` context) loop per sequence, using the CPU copies of the lengths so
no device sync happens inside the loop.

Softmax runs in float32 for half-precision inputs: torch SDPA's CPU and CUDA fused kernels
accumulate in float32 (see ``_sdpa``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pagedllm.attention.backend import AttentionBackend
from pagedllm.attention.kv_quant import dequantize, is_fp8, quantize
from pagedllm.attention.metadata import AttentionMetadata

# decode rows whose context is under this share of their group's longest start a new group
_GROUP_RATIO = 0.6
_MAX_GROUPS = 4


def _sdpa(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scale: float,
    mask: torch.Tensor | None = None,
    is_causal: bool = False,
    softcap: float | None = None,
) -> torch.Tensor:
    """SDPA over ``[B, H, Q, d]`` queries and ``[B, KVH, L, d]`` keys/values with GQA.

    The fused CPU/CUDA SDPA kernels accumulate scores and softmax in float32 for bf16/fp16
    inputs (checked: bf16 output within bf16 rounding of a float32 reference), so there is
    no explicit upcast: it would double the bytes read from the gathered pages. With
    ``softcap`` (Gemma 2) the scores become ``softcap * tanh(score / softcap)`` before the
    mask, which SDPA cannot do: the scores are computed explicitly then (HF's eager order).
    """
    gqa = query.shape[1] != key.shape[1]
    if softcap is None:
        return F.scaled_dot_product_attention(
            query, key, value, attn_mask=mask, is_causal=is_causal, scale=scale, enable_gqa=gqa
        )
    return softcapped_attention(query, key, value, scale, softcap, mask, is_causal)


def softcapped_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scale: float,
    softcap: float,
    mask: torch.Tensor | None = None,
    is_causal: bool = False,
) -> torch.Tensor:
    """Attention with tanh soft-capped scores, in HF eager's order: ``qk * scale``, ``/ cap``,
    ``tanh``, ``* cap``, mask, float32 softmax, ``@ v``. Shapes as ``_sdpa``."""
    group = query.shape[1] // key.shape[1]
    if group > 1:
        key = key.repeat_interleave(group, dim=1)
        value = value.repeat_interleave(group, dim=1)
    scores = torch.matmul(query, key.transpose(-1, -2)) * scale
    scores = torch.tanh(scores / softcap) * softcap
    if is_causal:
        q_len, k_len = scores.shape[-2:]
        mask = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device).tril(k_len - q_len)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(probs, value)


class TorchAttentionBackend(AttentionBackend):
    """Paged attention written with torch ops only (any device).

    The KV cache must be contiguous (as the cache engine allocates it). Not thread-safe: the
    page gather reuses one workspace per (dtype, device).
    """

    def __init__(self) -> None:
        self._workspace: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}
        self._groups_for: AttentionMetadata | None = None  # the step the groups belong to
        self._groups: list[tuple[torch.Tensor | None, int]] = []
        self._scale: torch.Tensor | None = None  # the fp8 scales of the forward in progress

    def write_kv(
        self,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
        kv_scale: torch.Tensor | None = None,
    ) -> None:
        """Write ``key``/``value`` ``[T, kvh, d]`` into the flat slots of ``kv_cache``.

        Negative slots (CUDA-graph padding rows) are skipped. An fp8 cache stores
        ``x / kv_scale[0 or 1]`` saturated to e4m3 (``kv_scale`` None: scale 1).
        """
        num_kv_heads, head_dim = kv_cache.shape[-2], kv_cache.shape[-1]
        flat = kv_cache.view(2, -1, num_kv_heads, head_dim)
        slots = slot_mapping.to(torch.int64)
        if slots.numel() and bool((slots < 0).any()):
            keep = slots >= 0
            slots, key, value = slots[keep], key[keep], value[keep]
        if is_fp8(kv_cache.dtype):
            # index_copy_ has no float8 CPU kernel: copy the bytes
            k_scale, v_scale = (None, None) if kv_scale is None else kv_scale
            flat = flat.view(torch.uint8)
            key = quantize(key, k_scale).view(torch.uint8)
            value = quantize(value, v_scale).view(torch.uint8)
        flat[0].index_copy_(0, slots, key.to(flat.dtype))
        flat[1].index_copy_(0, slots, value.to(flat.dtype))

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
        """Attend ``query`` ``[T, H, d]`` over each sequence's paged context -> ``[T, H, d]``.

        With a ``sliding_window`` only the pages that hold the window are read: the table
        slots before it may hold the null block (pages freed by the KV manager). fp8 pages are
        dequantized with ``kv_scale`` into ``query``'s dtype after the gather.
        """
        self._scale = kv_scale
        output = torch.empty_like(query)
        num_decodes = metadata.num_decodes
        if num_decodes > 0:
            for rows, max_len in self._decode_groups(metadata):
                seq_lens = metadata.seq_lens[:num_decodes]
                tables = metadata.block_tables[:num_decodes]
                q = query[:num_decodes]
                if rows is not None:
                    q, tables, seq_lens = q[rows], tables[rows], seq_lens[rows]
                out = self._decode(
                    q, kv_cache, tables, seq_lens, max_len, scale, sliding_window, softcap
                )
                if rows is None:
                    output[:num_decodes] = out
                else:
                    output.index_copy_(0, rows, out)
        if metadata.num_prefills > 0:
            self._prefill(query, kv_cache, metadata, scale, (sliding_window, softcap), output)
        return output

    def _gather_pages(
        self, kv_cache: torch.Tensor, blocks: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V pages ``blocks`` (flat ``[n]``), each as ``[n, block_size * kvh * d]``.

        Pages come back in ``dtype`` (the query's): fp8 pages dequantized with the layer's
        ``kv_scale`` given to ``forward``, pages of another float dtype converted (both as new
        tensors).

        Each page is a contiguous row of the (contiguous) cache, so ``index_select`` along
        dim 0 is a plain row gather: measured several times faster on CPU than advanced
        indexing of the 5-D cache. The result lands in a reused workspace because a fresh
        multi-MB allocation per layer costs page faults that took longer than the copy itself.
        The returned views are only valid until the next call.
        """
        flat = kv_cache.view(2, kv_cache.shape[1], -1)
        index = blocks.to(torch.int64)
        row = flat.shape[2]
        numel = index.numel() * row
        key = (kv_cache.dtype, kv_cache.device)
        work = self._workspace.get(key)
        if work is None or work.numel() < 2 * numel:
            work = torch.empty(2 * numel, dtype=kv_cache.dtype, device=kv_cache.device)
            self._workspace[key] = work
        k_out = work[:numel].view(-1, row)
        v_out = work[numel : 2 * numel].view(-1, row)
        torch.index_select(flat[0], 0, index, out=k_out)
        torch.index_select(flat[1], 0, index, out=v_out)
        if is_fp8(kv_cache.dtype):
            k_scale, v_scale = (None, None) if self._scale is None else self._scale
            return dequantize(k_out, k_scale, dtype), dequantize(v_out, v_scale, dtype)
        if kv_cache.dtype != dtype:  # kv_cache_dtype other than the model's (e.g. bf16 pages)
            return k_out.to(dtype), v_out.to(dtype)
        return k_out, v_out

    def _decode_groups(self, metadata: AttentionMetadata) -> list[tuple[torch.Tensor | None, int]]:
        """Decode rows grouped by context length: (row index or None for all, max length).

        One padded gather for all decodes reads and attends over every row padded to the
        longest context; with mixed lengths most of that is padding (W3: 2.4x the real K/V).
        Rows sorted by length are cut into groups whose shortest context is at least
        ``_GROUP_RATIO`` of their longest, at most ``_MAX_GROUPS`` groups. Computed once per
        step (the metadata object is the same for every layer).
        """
        if self._groups_for is metadata:
            return self._groups
        num_decodes = metadata.num_decodes
        lens = metadata.seq_lens_cpu
        if lens is None:  # no host copy of the lengths: one group, no device sync
            groups: list[tuple[torch.Tensor | None, int]] = [(None, metadata.max_seq_len)]
        else:
            lens = lens[:num_decodes]
            order = sorted(range(num_decodes), key=lens.__getitem__, reverse=True)
            cuts: list[list[int]] = [[order[0]]]
            for i in order[1:]:
                head = lens[cuts[-1][0]]
                if lens[i] < _GROUP_RATIO * head and len(cuts) < _MAX_GROUPS:
                    cuts.append([i])
                else:
                    cuts[-1].append(i)
            if len(cuts) == 1:
                groups = [(None, lens[order[0]])]
            else:
                device = metadata.seq_lens.device
                groups = [
                    (torch.tensor(rows, dtype=torch.long, device=device), lens[rows[0]])
                    for rows in cuts
                ]
        self._groups_for, self._groups = metadata, groups
        return groups

    def _decode(
        self,
        query: torch.Tensor,
        kv_cache: torch.Tensor,
        block_tables: torch.Tensor,
        seq_lens: torch.Tensor,
        max_len: int,
        scale: float,
        sliding_window: int | None,
        softcap: float | None,
    ) -> torch.Tensor:
        """Decode rows at once: one gather of their (window's) pages, one masked SDPA.

        Row ``i`` reads pages ``first[i] .. first[i] + num_pages - 1`` of its table: all of
        them without a window, else only those holding its last ``sliding_window`` positions.
        Gathered slots the row may not see (past its length, before its window) are zeroed:
        a masked score still multiplies its value, and a stale page tail may hold anything.
        """
        num_decodes = query.shape[0]
        block_size = kv_cache.shape[2]
        width = block_tables.shape[1]
        num_pages = min(-(-max_len // block_size), width)
        last = (seq_lens.to(torch.int64) - 1)[:, None]  # the query's position
        arange = torch.arange(num_pages * block_size, device=query.device)
        if sliding_window is not None and sliding_window < max_len:
            num_pages = min(num_pages, (sliding_window - 1) // block_size + 2)
            first = (last - sliding_window + 1).clamp(min=0) // block_size  # [B, 1]
            cols = first + torch.arange(num_pages, device=query.device)[None, :]  # [B, P]
            tables = block_tables.gather(1, cols.clamp(max=width - 1)).reshape(-1)
            key_pos = first * block_size + arange[None, : num_pages * block_size]
        else:
            tables = block_tables[:, :num_pages].reshape(-1)
            key_pos = arange[None, :]
        kvh, dim = kv_cache.shape[-2:]
        max_pad = num_pages * block_size
        mask = key_pos <= last
        if sliding_window is not None:
            mask = mask & (key_pos > last - sliding_window)
        # row-wise memset of the hidden slots (a broadcast masked_fill_ was 10x the gather)
        hidden = (~mask).reshape(-1).nonzero().squeeze(1)
        k, v = (
            _zero_rows(x.view(num_decodes * max_pad, kvh * dim), hidden)
            .view(num_decodes, max_pad, kvh, dim)
            .transpose(1, 2)
            for x in self._gather_pages(kv_cache, tables, query.dtype)
        )  # [B, kvh, L, d]
        # One query per sequence, so the g query heads sharing a KV head can ride as g query
        # rows of that head: [B, kvh, g, d]. Same result as GQA, no K/V expansion.
        group = query.shape[1] // kvh
        q = query.view(num_decodes, kvh, group, dim)
        out = _sdpa(q, k, v, scale, mask=mask[:, None, None, :], softcap=softcap)
        return out.reshape(num_decodes, kvh * group, dim)

    def _prefill(
        self,
        query: torch.Tensor,
        kv_cache: torch.Tensor,
        metadata: AttentionMetadata,
        scale: float,
        window_cap: tuple[int | None, float | None],
        output: torch.Tensor,
    ) -> None:
        """Prefill chunks one sequence at a time, causal by position over the cached prefix.

        With a window, pages wholly before the chunk's first query's window are not read.
        """
        sliding_window, softcap = window_cap
        block_size = kv_cache.shape[2]
        seq_lens = metadata.seq_lens_cpu
        if seq_lens is None:
            seq_lens = metadata.seq_lens.tolist()
        query_lens = metadata.query_lens_cpu
        if query_lens is None:
            query_lens = torch.diff(metadata.query_start_loc).tolist()
        start = sum(query_lens[: metadata.num_decodes])
        for i in range(metadata.num_decodes, len(seq_lens)):
            seq_len, query_len = seq_lens[i], query_lens[i]
            first_page = 0
            if sliding_window is not None:
                first_page = max(0, seq_len - query_len - sliding_window + 1) // block_size
            key_start = first_page * block_size
            num_pages = -(-seq_len // block_size)
            pages = self._gather_pages(
                kv_cache, metadata.block_tables[i, first_page:num_pages], query.dtype
            )
            k, v = (  # [1, kvh, L, d]
                x.view(-1, *kv_cache.shape[-2:])[: seq_len - key_start].transpose(0, 1)[None]
                for x in pages
            )
            q = query[start : start + query_len].transpose(0, 1).unsqueeze(0)  # [1, H, Q, d]
            window_covers = sliding_window is None or sliding_window >= seq_len
            if query_len == seq_len and window_covers:
                out = _sdpa(q, k, v, scale, is_causal=True, softcap=softcap)
            else:
                mask = _chunk_mask(seq_len, query_len, key_start, sliding_window, query.device)
                out = _sdpa(q, k, v, scale, mask=mask, softcap=softcap)
            output[start : start + query_len] = out[0].transpose(0, 1)
            start += query_len


def _zero_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Zero rows ``rows`` of ``x`` in place (none: untouched); returns ``x``."""
    if rows.numel():
        x.index_fill_(0, rows, 0)
    return x


def _chunk_mask(
    seq_len: int,
    query_len: int,
    key_start: int,
    sliding_window: int | None,
    device: torch.device,
) -> torch.Tensor:
    """Boolean ``[Q, L]`` mask over keys ``key_start .. seq_len - 1``: the query at position
    p sees keys at positions <= p (and > p - window, when one is set)."""
    q_pos = torch.arange(seq_len - query_len, seq_len, device=device)[:, None]
    k_pos = torch.arange(key_start, seq_len, device=device)[None, :]
    mask = k_pos <= q_pos
    if sliding_window is not None:
        mask &= k_pos > q_pos - sliding_window
    return mask
