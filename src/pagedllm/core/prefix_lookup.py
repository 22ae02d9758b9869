"""Prefix-cache lookup across KV cache groups and tiers: which leading blocks a request can reuse.

Pure Python (no torch). ``KVCacheManager.get_computed_blocks`` calls ``find_prefix_hits`` for a
request that holds no blocks. The hit is the longest run of ``h`` whole blocks, never covering
the last token (it must produce logits), that every group can use: full-attention groups need
blocks ``0 .. h-1``, sliding-window groups only those their window sees from position
``h * block_size`` (``SingleTypeKVManager.hit_window_blocks``). Each block is looked up on the
device first, then in the lower tiers (host pages, disk index: ``core/kv_tiers.py``); a lower-tier
hit is returned as a ``TierHit`` that ``allocate_slots`` turns into a fresh device block to load.

The lookup takes no references and changes nothing: the caller reserves what it uses.
"""

from __future__ import annotations

from collections.abc import Sequence

from pagedllm.core.block_pool import BlockHash, BlockPool, KVBlock, make_block_hash
from pagedllm.core.kv_tiers import KVTiers, TierHit
from pagedllm.core.single_type_manager import SingleTypeKVManager

# prefix hits per group: ``hits[g][i]`` is block i of group g (a device block, or a hit in a
# lower tier to load), None where a window group does not need it (its slot gets the null block)
GroupHits = list[list[KVBlock | TierHit | None]]


def find_prefix_hits(
    pool: BlockPool,
    groups: Sequence[SingleTypeKVManager],
    tiers: KVTiers,
    block_size: int,
    tokens: Sequence[int],
) -> tuple[GroupHits, int]:
    """(hits per group, hit tokens) for ``tokens``; ``([], 0)`` without a hit."""
    bs = block_size
    found: GroupHits = [[] for _ in groups]
    parent: BlockHash | None = None
    # a disk hit is read into a host page: stop where the host pool has no more room (host
    # hits pin their pages, which leaves fewer to evict), or the request would wait forever
    room = tiers.host.num_free + tiers.host.num_evictable()
    num_tier = num_disk = 0
    for i in range((len(tokens) - 1) // bs):
        chunk = tokens[i * bs : (i + 1) * bs]
        block_hash = make_block_hash(parent, chunk)
        row = [_find_block(pool, tiers, block_hash, chunk, g) for g in range(len(found))]
        if any(b is None for b, m in zip(row, groups, strict=True) if m.sliding_window is None):
            break  # a full group misses: no longer hit is possible
        tier = [b for b in row if isinstance(b, TierHit)]
        num_tier += len(tier)
        num_disk += sum(1 for b in tier if b.page is None)
        if num_disk and num_tier > room:
            break
        for g, block in enumerate(row):
            found[g].append(block)
        # chain from a cached object so later equality checks stop at identity
        hit = next((b for b in row if b is not None), None)
        parent = block_hash if hit is None else hit.block_hash
    num_hit = longest_usable_hit(groups, found)
    if num_hit == 0:
        return [], 0
    hits: GroupHits = []
    for mgr, blocks in zip(groups, found, strict=True):
        first = mgr.hit_window_blocks(num_hit)
        hits.append([None] * first + blocks[first:num_hit])
    return hits, num_hit * bs


def _find_block(
    pool: BlockPool, tiers: KVTiers, block_hash: BlockHash, chunk: Sequence[int], group: int
) -> KVBlock | TierHit | None:
    """Group ``group``'s block with this identity: on the device, else in a lower tier."""
    block = pool.get_cached_block(block_hash, chunk, group)
    if block is None and tiers.caching:
        return tiers.lookup(group, block_hash)
    return block


def longest_usable_hit(groups: Sequence[SingleTypeKVManager], found: GroupHits) -> int:
    """Largest ``h`` such that every group has the blocks it needs of a ``h``-block hit."""
    h = len(found[0]) if found else 0
    misses = []  # per group: misses[g][i] = missing blocks among the first i
    for blocks in found:
        counts = [0]
        for block in blocks:
            counts.append(counts[-1] + (block is None))
        misses.append(counts)
    while h > 0:
        ok = True
        for mgr, counts in zip(groups, misses, strict=True):
            first = mgr.hit_window_blocks(h)
            if counts[h] - counts[first]:
                ok = False
                break
        if ok:
            return h
        h -= 1
    return 0
