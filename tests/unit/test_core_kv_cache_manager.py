"""KV cache manager: prefix sharing, the last-token cap, fork and copy-on-write, swap."""

from __future__ import annotations

from pagedllm.core import block_pool
from pagedllm.core.kv_cache_manager import KVCacheManager
from test_core_fakes import check_pool, make_request

BS = 4


def _admit(kv: KVCacheManager, req):
    hits, num_hit = kv.get_computed_blocks(req)
    assert kv.allocate_slots(req, req.num_tokens - num_hit, hits)
    req.num_computed_tokens = req.num_tokens
    return num_hit


def test_common_three_block_prefix_is_shared_exactly():
    kv = KVCacheManager(num_blocks=16, block_size=BS)
    prefix = list(range(1, 13))  # 3 full blocks
    a = make_request("a", prefix + [50, 51, 52])
    b = make_request("b", prefix + [60, 61, 62, 63, 64])
    assert _admit(kv, a) == 0
    assert _admit(kv, b) == 12
    ta, tb = kv.get_block_table("a"), kv.get_block_table("b")
    assert ta[:3] == tb[:3]
    assert set(ta[3:]).isdisjoint(tb[3:])
    assert [kv.pool.blocks[i].ref_cnt for i in ta[:3]] == [2, 2, 2]
    assert kv.prefix_cache_hits == 12 and kv.prefix_cache_queries == 15 + 17
    check_pool(kv)
    kv.free(a)
    kv.free(b)
    assert kv.num_free_blocks == 16 and kv.usage() == 0.0


def test_freed_blocks_stay_findable_and_hit_is_capped_below_all_tokens():
    kv = KVCacheManager(num_blocks=8, block_size=BS)
    a = make_request("a", list(range(8)))  # exactly 2 full blocks
    _admit(kv, a)
    kv.free(a)
    again = make_request("again", list(range(8)))
    hits, num_hit = kv.get_computed_blocks(again)
    # the last token must be computed: only the first block may hit
    assert num_hit == 4 and len(hits) == 1


def test_forced_collision_does_not_share_wrong_blocks(monkeypatch):
    monkeypatch.setattr(block_pool, "hash_block_tokens", lambda *args: 0)
    kv = KVCacheManager(num_blocks=16, block_size=BS)
    a = make_request("a", [1, 2, 3, 4, 5, 6, 7, 8, 9])
    b = make_request("b", [9, 9, 9, 9, 5, 6, 7, 8, 9])  # same 2nd block, other parent
    c = make_request("c", [1, 2, 3, 4, 0, 0, 0, 0, 9])
    _admit(kv, a)
    assert _admit(kv, b) == 0
    assert _admit(kv, c) == 4
    assert kv.get_block_table("c")[0] == kv.get_block_table("a")[0]
    assert kv.get_block_table("c")[1] != kv.get_block_table("a")[1]


def test_prefix_caching_disabled_shares_nothing():
    kv = KVCacheManager(num_blocks=16, block_size=BS, enable_prefix_caching=False)
    a = make_request("a", list(range(13)))
    b = make_request("b", list(range(13)))
    _admit(kv, a)
    assert _admit(kv, b) == 0
    assert set(kv.get_block_table("a")).isdisjoint(kv.get_block_table("b"))
    assert kv.prefix_cache_queries == 0


def test_fork_four_children_share_then_copy_on_write():
    kv = KVCacheManager(num_blocks=32, block_size=BS)
    parent = make_request("p", list(range(10)))  # 2 full blocks + 2 tokens in the third
    _admit(kv, parent)
    children = []
    for i in range(4):
        child = make_request(f"c{i}", list(range(10)) + [100 + i])
        kv.fork(parent, child)
        child.num_computed_tokens = 10
        children.append(child)
    table = kv.get_block_table("p")
    assert all(kv.get_block_table(c.request_id) == table for c in children)
    assert [kv.pool.blocks[i].ref_cnt for i in table] == [5, 5, 5]
    assert kv.take_blocks_to_copy() == []
    # first write into the shared partial block copies it
    assert kv.allocate_slots(children[0], 1)
    t0 = kv.get_block_table("c0")
    assert t0[:2] == table[:2] and t0[2] != table[2]
    assert kv.take_blocks_to_copy() == [(table[2], t0[2])]
    assert kv.pool.blocks[t0[2]].ref_cnt == 1
    assert kv.pool.blocks[table[2]].ref_cnt == 4
    # full blocks are never copied; the copy list was drained
    assert kv.take_blocks_to_copy() == []
    check_pool(kv)
    for r in [parent, *children]:
        kv.free(r)
    assert kv.num_free_blocks == 32


def test_allocation_failure_changes_nothing():
    kv = KVCacheManager(num_blocks=2, block_size=BS)
    req = make_request("r", list(range(12)))
    assert not kv.allocate_slots(req, 12)
    assert kv.get_block_table("r") == [] and kv.num_free_blocks == 2


def test_watermark_applies_only_when_asked():
    kv = KVCacheManager(num_blocks=10, block_size=BS, watermark=0.2)  # 2 blocks reserved
    req = make_request("r", list(range(36)))  # 9 blocks
    assert not kv.allocate_slots(req, 36, reserve_watermark=True)
    assert kv.allocate_slots(req, 36)


def test_swap_out_and_in_roundtrip():
    kv = KVCacheManager(num_blocks=8, block_size=BS, num_cpu_blocks=4)
    req = make_request("r", list(range(9)))
    _admit(kv, req)
    old = kv.get_block_table("r")
    assert kv.can_swap_out(req)
    out = kv.swap_out(req)
    assert [d for d, _ in out] == old and kv.num_cpu_free_blocks == 1
    assert kv.num_free_blocks == 8
    assert kv.can_swap_in(req)
    back = kv.swap_in(req)
    assert [c for c, _ in back] == [c for _, c in out]
    assert kv.get_block_table("r") == [d for _, d in back]
    assert kv.num_cpu_free_blocks == 4
    kv.free(req)
    assert kv.num_free_blocks == 8


def test_long_prompt_repeated_hits_without_deep_equality():
    """A 32k-token prompt is a chain of 2,000 block identities. Asked again, its identities
    must chain from the cached ones (equality stops at the first shared parent): comparing
    two independently built chains used to recurse once per block (RecursionError on the
    H200's W-long run) and cost O(blocks) per lookup."""
    import time

    n = 3000  # blocks, deeper than Python's default recursion limit
    kv = KVCacheManager(num_blocks=2 * n + 8, block_size=1)
    prompt = list(range(7, 7 + n))
    _admit(kv, make_request("first", prompt))
    start = time.perf_counter()
    assert _admit(kv, make_request("again", prompt)) == n - 1
    assert time.perf_counter() - start < 2.0
    check_pool(kv)
    # two chains built apart compare equal, iteratively, and differ at the root
    a = b = c = None
    for i, t in enumerate(prompt):
        a = block_pool.make_block_hash(a, [t])
        b = block_pool.make_block_hash(b, [t])
        c = block_pool.make_block_hash(c, [t + 1 if i == 0 else t])
    assert a == b and a is not b and hash(a) == hash(b)
    assert a != c
