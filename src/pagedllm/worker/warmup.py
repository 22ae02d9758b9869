"""Warm-up and graphs: compile every kernel variant before the first request, capture decode
graphs (GPU only)."""

from __future__ import annotations

import torch

from pagedllm.attention.metadata import ForwardContext, build_metadata, set_forward_context
from pagedllm.layers.attention import Attention
from pagedllm.layers.sampler import Sampler, SamplingBatch
from pagedllm.sampling_params import SamplingParams
from pagedllm.worker.cache_engine import CacheEngine
from pagedllm.worker.cuda_graphs import CudaGraphRunner


@torch.inference_mode()
def warm_up(
    model: torch.nn.Module,
    backend: object,
    cache: CacheEngine,
    sampler: Sampler,
    block_size: int,
    vocab_size: int,
) -> None:
    """One mixed batch (two decodes, a prefill chunk over a cached prefix and a fresh prompt)
    through the paged path, writing only into blocks that are still free (their contents are
    overwritten before any request reads them), then the sampler's kernels."""
    device = cache.device
    bs = block_size
    lens = [(1, 3), (1, 2 * bs + 1), (bs + 3, 2 * bs + 5), (7, 7)]  # (query, context)
    need = [-(-ctx // bs) for _, ctx in lens]
    if sum(need) > cache.num_blocks:
        return
    tables, next_block = [], 0
    for n in need:
        tables.append(list(range(next_block, next_block + n)))
        next_block += n
    meta = build_metadata([q for q, _ in lens], [c for _, c in lens], tables, bs, device)
    total = sum(q for q, _ in lens)
    ids = torch.zeros(total, dtype=torch.long, device=device)
    pos = torch.cat([torch.arange(c - q, c, device=device) for q, c in lens])
    with set_forward_context(ForwardContext(meta, cache.kv_caches, backend)):
        hidden = model(ids, pos)
    logits = model.compute_logits(hidden[-2:])
    backend.warm_up(cache.kv_caches[0], model.num_heads, hidden.dtype, attention_variants(model))
    # the fused temperature-sampling kernel plus greedy rows
    params = [SamplingParams(temperature=0.7), SamplingParams(temperature=0.0)]
    batch = SamplingBatch.build(params, [[]] * 2, [[]] * 2, [None] * 2, device, vocab_size)
    sampler(logits, batch)
    torch.cuda.synchronize(device)


def attention_variants(model: torch.nn.Module) -> list[tuple[bool, float | None]]:
    """The model's attention kinds, (has a sliding window, soft-cap), each a compiled variant
    of the decode kernel; a plain full-attention one is always included."""
    kinds = {(False, None)}
    for module in model.modules():
        if isinstance(module, Attention):
            kinds.add((module.sliding_window is not None, module.logit_softcap))
    return sorted(kinds, key=lambda k: (k[0], k[1] or 0.0))


def capture_graphs(
    model: torch.nn.Module,
    backend: object,
    cache: CacheEngine,
    max_num_seqs: int,
    max_model_len: int,
    block_size: int,
    layer_group: list[int] | None = None,
    num_groups: int = 1,
) -> CudaGraphRunner:
    """Captured decode forwards per padded batch size (per KV cache group tables for hybrid
    models: ``layer_group`` maps each layer to its group)."""
    graphs = CudaGraphRunner(
        model,
        backend,
        cache.kv_caches,
        max_num_seqs=max_num_seqs,
        max_model_len=max_model_len,
        block_size=block_size,
        device=cache.device,
        layer_group=layer_group,
        num_groups=num_groups,
    )
    graphs.capture()
    return graphs
