"""KV sizing: how many pages the pool gets (explicit blocks, explicit bytes, or profiling)."""

from __future__ import annotations

import torch

from pagedllm.attention.metadata import ForwardContext, set_forward_context
from pagedllm.config import EngineConfig
from pagedllm.worker.cache_engine import KVCacheSpec

_CPU_DEFAULT_KV_BYTES = 1 << 30


def determine_num_blocks(
    config: EngineConfig,
    spec: KVCacheSpec,
    model: torch.nn.Module,
    backend: object,
    device: torch.device,
) -> tuple[int, int]:
    """(device blocks, CPU swap blocks): explicit blocks, explicit bytes, or free memory after
    a profiling forward."""
    cache = config.cache
    per_block = spec.bytes_per_block
    num_cpu = cache.num_cpu_blocks
    if num_cpu is None:
        num_cpu = (cache.swap_space + cache.cpu_cache_memory) // per_block  # one host pool
    if cache.num_gpu_blocks is not None:
        return cache.num_gpu_blocks, num_cpu
    if cache.kv_cache_memory is not None:
        return cache.kv_cache_memory // per_block, num_cpu
    if device.type != "cuda":
        return _CPU_DEFAULT_KV_BYTES // per_block, num_cpu
    free = _profile_free_cuda_memory(config, model, backend, device)
    return max(free // per_block, 0), num_cpu


@torch.inference_mode()
def _profile_free_cuda_memory(
    config: EngineConfig, model: torch.nn.Module, backend: object, device: torch.device
) -> int:
    """Run a forward of max_num_batched_tokens tokens; what is left is for KV pages."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    n = min(config.scheduler.max_num_batched_tokens, config.scheduler.max_model_len)
    ids = torch.zeros(n, dtype=torch.long, device=device)
    pos = torch.arange(n, dtype=torch.long, device=device)
    with set_forward_context(ForwardContext(None, [], backend)):
        hidden = model(ids, pos)
        model.compute_logits(hidden[-min(n, config.scheduler.max_num_seqs) :])
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    _, total = torch.cuda.mem_get_info(device)
    budget = int(total * config.cache.gpu_memory_utilization) - peak
    torch.cuda.empty_cache()
    return max(budget, 0)
