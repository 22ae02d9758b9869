"""``EngineStats``: the engine's counters and gauges, for /metrics, the stats log and the
engine-core process's periodic report."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class EngineStats:
    """A snapshot for metrics and logs."""

    num_running: int
    num_waiting: int
    num_swapped: int
    kv_blocks_used: int
    kv_blocks_total: int
    kv_usage: float  # 0 when idle: cached-but-unreferenced blocks count as free
    prefix_cache_queries: int
    prefix_cache_hits: int
    num_preemptions: int
    prompt_tokens_total: int
    generation_tokens_total: int
    # lower tiers of the prefix cache (core/kv_tiers.py): hits, bytes moved, occupancy
    host_tier_hit_blocks: int = 0
    disk_tier_hit_blocks: int = 0
    tier_bytes_to_host: int = 0  # device -> host write-backs
    tier_bytes_to_device: int = 0  # host -> device loads
    disk_bytes_written: int = 0
    disk_bytes_read: int = 0
    host_tier_blocks: int = 0  # host pages holding cached blocks
    host_swap_blocks: int = 0  # host pages owned by swapped-out requests
    host_blocks_total: int = 0
    disk_tier_blocks: int = 0
    disk_tier_blocks_total: int = 0


def engine_stats(engine: Any) -> EngineStats:
    """Read an ``LLMEngine``'s scheduler and KV manager (on the thread that owns the engine)."""
    scheduler = engine.scheduler
    kv = scheduler.kv_manager
    total = kv.num_blocks
    return EngineStats(
        num_running=scheduler.num_running,
        num_waiting=scheduler.num_waiting,
        num_swapped=scheduler.num_swapped,
        kv_blocks_used=total - kv.num_free_blocks,
        kv_blocks_total=total,
        kv_usage=kv.usage(),
        prefix_cache_queries=kv.prefix_cache_queries,
        prefix_cache_hits=kv.prefix_cache_hits,
        num_preemptions=scheduler.num_preemptions,
        prompt_tokens_total=engine.prompt_tokens_total,
        generation_tokens_total=engine.generation_tokens_total,
        **kv.tiers.counters(engine.runner.kv_spec.bytes_per_block),
    )
