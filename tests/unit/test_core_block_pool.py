"""Block pool: ref counts, LRU free queue, prefix-cache index."""

from __future__ import annotations

import pytest

from pagedllm.config import CacheConfig
from pagedllm.core import block_pool
from pagedllm.core.block_pool import BlockPool, NoFreeBlocksError, make_block_hash
from pagedllm.core.kv_cache_manager import KVCacheManager


def test_get_and_free_roundtrip():
    pool = BlockPool(4)
    blocks = pool.get_new_blocks(3)
    assert [b.ref_cnt for b in blocks] == [1, 1, 1]
    assert pool.num_free_blocks == 1 and pool.usage() == 0.75
    pool.free_blocks(blocks)
    assert pool.num_free_blocks == 4 and pool.usage() == 0.0


def test_not_enough_blocks_raises_and_takes_nothing():
    pool = BlockPool(2)
    with pytest.raises(NoFreeBlocksError):
        pool.get_new_blocks(3)
    assert pool.num_free_blocks == 2


def test_double_free_raises():
    pool = BlockPool(2)
    (block,) = pool.get_new_blocks(1)
    pool.free_blocks([block])
    with pytest.raises(RuntimeError, match="double free"):
        pool.free_blocks([block])


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_num_blocks(bad):
    with pytest.raises(ValueError, match="num_blocks"):
        BlockPool(bad)


@pytest.mark.parametrize("bad", [0, -4])
def test_bad_block_size(bad):
    with pytest.raises(ValueError, match="block_size"):
        CacheConfig(block_size=bad).validate()
    with pytest.raises(ValueError, match="block_size"):
        KVCacheManager(num_blocks=8, block_size=bad)


def _cached(pool: BlockPool, tokens: tuple[int, ...], parent=None):
    (block,) = pool.get_new_blocks(1)
    h = make_block_hash(parent, tokens)
    pool.cache_full_block(block, h, tokens)
    return block, h


def test_eviction_is_lru_and_uncached_blocks_go_first():
    pool = BlockPool(4)
    a, ha = _cached(pool, (1, 2))
    b, hb = _cached(pool, (3, 4))
    c, hc = _cached(pool, (5, 6))
    (plain,) = pool.get_new_blocks(1)
    pool.free_blocks([b])
    pool.free_blocks([a])
    pool.free_blocks([c])
    pool.free_blocks([plain])  # never cached: reused before any cached block
    assert pool.free_queue_ids() == [plain.block_id, b.block_id, a.block_id, c.block_id]
    # touching `a` revives it from the middle; it is no longer evictable
    assert pool.get_cached_block(ha, (1, 2)) is a
    pool.touch([a])
    assert pool.free_queue_ids() == [plain.block_id, b.block_id, c.block_id]
    got = pool.get_new_blocks(2)
    assert [g.block_id for g in got] == [plain.block_id, b.block_id]
    # b was evicted: its hash is gone; c is still findable
    assert pool.get_cached_block(hb, (3, 4)) is None
    assert pool.get_cached_block(hc, (5, 6)) is c
    assert got[1].block_hash is None


def test_forced_collision_never_returns_wrong_block(monkeypatch):
    monkeypatch.setattr(block_pool, "hash_block_tokens", lambda *args: 7)
    pool = BlockPool(8)
    x, hx = _cached(pool, (1, 1))
    z, hz = _cached(pool, (2, 2))
    y_under_x, hyx = _cached(pool, (5, 5), parent=hx)
    assert hx.value == hz.value == hyx.value == 7
    assert pool.get_cached_block(make_block_hash(None, (1, 1)), (1, 1)) is x
    assert pool.get_cached_block(make_block_hash(None, (2, 2)), (2, 2)) is z
    assert pool.get_cached_block(make_block_hash(None, (3, 3)), (3, 3)) is None
    # same tokens, different parent chain: a miss, not y_under_x
    assert pool.get_cached_block(make_block_hash(hz, (5, 5)), (5, 5)) is None
    assert pool.get_cached_block(make_block_hash(hx, (5, 5)), (5, 5)) is y_under_x


def test_caching_disabled_finds_nothing():
    pool = BlockPool(2, enable_caching=False)
    block, h = _cached(pool, (1, 2))
    pool.free_blocks([block])
    assert pool.get_cached_block(h, (1, 2)) is None
