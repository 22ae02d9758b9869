"""Host and disk tiers of the prefix cache, with the real KV manager and the fake runner.

The fake runner applies every copy of a plan in the documented order and reads each request's
whole prefix back through its block table, so a load from a wrong page, a write-back after the
device block was overwritten, or a page reused too early shows up as a wrong KV read.
"""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

from pagedllm.config import PreemptionMode
from pagedllm.core.host_tier import HostPool
from pagedllm.core.request import RequestStatus
from test_core_fakes import (
    FakeRunner,
    check_step,
    make_request,
    make_scheduler,
    run,
    run_async,
)

BS = 4
SYSTEM = list(range(200, 216))  # 16 tokens: 4 blocks shared by every conversation


def _conversation(i: int, length: int = 24) -> list[int]:
    return SYSTEM + [300 + 10 * i + k % 7 for k in range(length)]


def _turn(sched, runner, rid: str, prompt: list[int], max_tokens: int = 4):
    sched.add_request(make_request(rid, prompt, max_tokens=max_tokens))
    return run(sched, runner)[rid]


def _second_turn_cached(host_tier: bool, disk: int = 0, num_cpu: int = 64) -> tuple[int, int]:
    """(previous tokens, cached tokens of the next turn) after other traffic evicted them."""
    sched = make_scheduler(
        num_blocks=18, num_cpu_blocks=num_cpu, host_tier=host_tier, num_disk_blocks=disk
    )
    runner = FakeRunner(BS)
    first = _turn(sched, runner, "a0", _conversation(0))
    history = first.all_token_ids
    for i in range(1, 6):  # other conversations reuse every device block
        _turn(sched, runner, f"b{i}", _conversation(i, 40))
    second = _turn(sched, runner, "a1", history + [401, 402, 403])
    _check_idle(sched, runner)
    return len(history), second.num_cached_tokens


def _check_idle(sched, runner) -> None:
    """No leak in any tier; every host entry holds exactly its block's tokens."""
    kv = sched.kv_manager
    assert kv.num_free_blocks == kv.num_blocks and not kv.request_ids()
    kv.host.check()
    assert kv.host.num_swap == 0
    for (_, block_hash), entry in kv.host._cached.items():
        content = [runner.cpu.get(entry.page * BS + o) for o in range(BS)]
        assert content == list(block_hash.token_ids), "a host entry not written from real KV"
    if kv.tiers.disk is not None:
        assert len(kv.tiers.disk) <= kv.tiers.disk.capacity
        assert set(runner.disk) >= set(kv.tiers.disk.names())


def test_host_tier_serves_an_evicted_conversation():
    prev, cached = _second_turn_cached(host_tier=True)
    assert cached >= 0.9 * prev, (prev, cached)


def test_without_host_tier_the_evicted_conversation_is_recomputed():
    prev, cached = _second_turn_cached(host_tier=False)
    assert cached <= len(SYSTEM), (prev, cached)  # at most the shared system prompt


def test_disk_tier_serves_what_the_host_tier_evicted():
    # a host pool of 8 pages cannot hold the conversation (7+ blocks) past the other traffic
    prev, cached = _second_turn_cached(host_tier=True, disk=200, num_cpu=8)
    assert cached >= 0.9 * prev, (prev, cached)
    prev, cached = _second_turn_cached(host_tier=True, disk=0, num_cpu=8)
    assert cached < 0.5 * prev, "without the disk tier that host pool is too small"


def test_swap_takes_pages_from_the_host_tier():
    pool = HostPool(4)
    from pagedllm.core.block_pool import make_block_hash

    keys = [(0, make_block_hash(None, [i])) for i in range(4)]
    pages = [pool.store(k, i) for i, k in enumerate(keys)]
    assert sorted(pages) == [0, 1, 2, 3] and pool.num_free == 0
    assert not pool.can_allocate_swap(1), "pages stored this step are pinned"
    pool.end_step()
    got = pool.allocate_swap(3)
    assert sorted(got) == sorted(pages[:3]), "LRU cached pages evicted for swap"
    assert [k for k, _ in pool.take_evicted()] == keys[:3]
    assert pool.keys() == keys[3:]
    pool.free_swap(got)
    assert pool.num_free == 0, "a swap-in reads them this step"
    pool.end_step()
    assert pool.num_free == 3
    pool.check()


def test_failed_step_drops_its_write_backs():
    sched = make_scheduler(num_blocks=12, num_cpu_blocks=32, host_tier=True)
    runner = FakeRunner(BS)
    _turn(sched, runner, "a", _conversation(0, 20))
    cached_before = sched.kv_manager.host.num_cached
    sched.add_request(make_request("b", _conversation(1, 30), max_tokens=2))
    out = sched.schedule()
    assert out.blocks_to_offload, "admitting b evicts a's cached blocks to the host"
    assert sched.kv_manager.host.num_cached > cached_before
    sched.discard_failed_step(out)  # the copies may never have run
    sched.finish_requests(["b"], RequestStatus.FINISHED_ABORTED)
    assert sched.kv_manager.host.num_cached == cached_before
    sched.kv_manager.host.check()


STATS = {"host_hits": 0, "disk_hits": 0, "failed_steps": 0, "swap_outs": 0}
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 4), st.integers(4, 24), st.integers(1, 12)),
        st.tuples(st.just("add"), st.integers(0, 4), st.integers(4, 24), st.integers(1, 12)),
        st.tuples(st.just("drain")),
        st.tuples(st.just("step")),
        st.tuples(st.just("step")),
        st.tuples(st.just("step")),
        st.tuples(st.just("fail")),
        st.tuples(st.just("abort"), st.integers(0, 30)),
        st.tuples(st.just("fork"), st.integers(0, 30)),
    ),
    min_size=20,
    max_size=60,
)
CONFIG = st.fixed_dictionaries(
    {
        "block_size": st.sampled_from([1, 2, 4]),
        "num_blocks": st.integers(8, 16),
        "num_cpu_blocks": st.sampled_from([3, 6, 24]),
        "num_disk_blocks": st.sampled_from([0, 40]),
        "mode": st.sampled_from([PreemptionMode.SWAP, PreemptionMode.RECOMPUTE]),
        "max_num_batched_tokens": st.integers(8, 40),
        "async_scheduling": st.booleans(),
    }
)


@settings(
    max_examples=80,
    deadline=None,
    derandomize=True,  # the coverage check below must not depend on luck
    suppress_health_check=[HealthCheck.too_slow],
)
@given(CONFIG, OPS)
def test_random_traffic_keeps_every_tier_bounded_and_sound(cfg, ops):
    drain = run_async if cfg.pop("async_scheduling") else run
    sched = make_scheduler(max_model_len=40, host_tier=True, **cfg)
    bs = cfg["block_size"]
    runner = FakeRunner(bs)
    kv = sched.kv_manager
    ids: list[str] = []
    for op in ops:
        if op[0] == "add":
            _, conv, length, max_tokens = op
            length = min(length, 30 - max_tokens)
            rid = f"r{len(ids)}"
            # conversations share a system prompt and come back with a longer history
            prompt = (
                SYSTEM[:6] + [conv + 1 + (k * 7) % 11 for k in range(length)] + [500 + len(ids)]
            )
            try:
                sched.add_request(make_request(rid, prompt, max_tokens=max_tokens))
            except ValueError:
                continue
            ids.append(rid)
        elif op[0] in ("step", "fail"):
            out = sched.schedule()
            check_step(sched, out)
            if op[0] == "step":
                sched.update_from_output(out, runner.execute(out, sched))
            else:  # nothing of the plan ran: its registrations and tier entries go
                STATS["failed_steps"] += 1
                sched.discard_failed_step(out)
                failed = [s.request_id for s in out.scheduled] + out.swapped_out_ids
                sched.finish_requests(failed + out.swapped_in_ids, RequestStatus.FINISHED_ABORTED)
        elif op[0] == "drain":  # finish everything: its blocks stay cached, to be evicted
            drain(sched, runner, max_steps=5000)
        elif ids and op[0] == "abort":
            sched.abort_request(ids[op[1] % len(ids)])
        elif ids and op[0] == "fork":
            parent = sched.requests.get(ids[op[1] % len(ids)])
            if parent is None or parent.status != RequestStatus.RUNNING:
                continue
            rid = f"r{len(ids)}"
            child = make_request(rid, parent.all_token_ids[:-1] + [99], max_tokens=3)
            try:
                sched.fork_request(parent.request_id, child)
            except ValueError:
                continue
            ids.append(rid)
        kv.host.check()
        assert kv.host.num_cached + kv.host.num_swap <= kv.host.num_pages
        if kv.tiers.disk is not None:
            assert len(kv.tiers.disk) <= kv.tiers.disk.capacity
    drain(sched, runner, max_steps=5000)
    STATS["host_hits"] += kv.tiers.stats.host_hit_blocks
    STATS["disk_hits"] += kv.tiers.stats.disk_hit_blocks
    STATS["swap_outs"] += sched.num_swap_outs
    STATS.setdefault("preemptions", 0)
    STATS["preemptions"] += sched.num_preemptions
    sched.schedule()  # hands out the last deferred frees and disk deletes
    kv.host.check()
    assert kv.num_free_blocks == kv.num_blocks and not kv.request_ids()
    assert kv.host.num_swap == 0 and kv.num_cpu_free_blocks == cfg["num_cpu_blocks"]
    for (_, block_hash), entry in kv.host._cached.items():
        content = [runner.cpu.get(entry.page * bs + o) for o in range(bs)]
        assert content == list(block_hash.token_ids), "a host entry not written from real KV"


def test_the_random_traffic_reached_every_path():
    """Runs after the property test (file order): its traffic hit the host tier and failed
    steps, so its invariants were checked where it matters."""
    assert STATS["host_hits"] > 0 and STATS["failed_steps"] > 0, STATS
    assert STATS["disk_hits"] > 0, STATS


def test_swap_evicts_cached_host_pages_and_outputs_stay_right():
    sched = make_scheduler(
        num_blocks=10, mode=PreemptionMode.SWAP, num_cpu_blocks=16, host_tier=True
    )
    runner = FakeRunner(BS)
    for i in range(8):  # each conversation evicts the previous one to the host tier
        _turn(sched, runner, f"w{i}", _conversation(i, 16))
    host = sched.kv_manager.host
    cached_before = host.num_cached
    assert cached_before == host.num_pages, "the host tier is full"
    for i in range(4):  # then requests that outgrow the pool are swapped out and back
        prompt = [i + 1] * 4 + list(range(20 + i, 30 + i))
        sched.add_request(make_request(f"r{i}", prompt, max_tokens=12))
    run(sched, runner)
    assert sched.num_swap_outs > 0
    assert host.num_cached < cached_before, "swap took pages from the host tier"
    _check_idle(sched, runner)


def test_a_failed_disk_read_forgets_the_entry():
    sched = make_scheduler(num_blocks=18, num_cpu_blocks=8, host_tier=True, num_disk_blocks=200)
    runner = FakeRunner(BS)
    first = _turn(sched, runner, "a0", _conversation(0))
    for i in range(1, 6):
        _turn(sched, runner, f"b{i}", _conversation(i, 40))
    disk = sched.kv_manager.tiers.disk
    before = len(disk)
    sched.add_request(make_request("a1", first.all_token_ids + [401], max_tokens=2))
    out = sched.schedule()
    assert out.disk_reads, "the conversation comes back from disk"
    sched.discard_failed_step(out)  # e.g. a file corrupted since start-up
    sched.finish_requests(["a1"], RequestStatus.FINISHED_ABORTED)
    assert len(disk) == before - len(out.disk_reads), "entries that failed are never served"
    nxt = sched.schedule()
    assert {name for name, _ in out.disk_reads} <= set(nxt.disk_deletes)
    runner.execute(nxt, sched)
    _check_idle(sched, runner)


def test_tier_options_are_validated():
    import pytest

    from pagedllm.config import CacheConfig

    with pytest.raises(ValueError, match="cpu_cache_memory"):
        CacheConfig(cpu_cache_memory=-1).validate()
    with pytest.raises(ValueError, match="kv_disk_bytes"):
        CacheConfig(cpu_cache_memory=1 << 20, kv_disk_path="/tmp/x").validate()
    with pytest.raises(ValueError, match="cpu_cache_memory"):
        CacheConfig(kv_disk_path="/tmp/x", kv_disk_bytes=1 << 20).validate()


def test_hybrid_groups_reload_from_the_host_tier():
    from hybrid_fakes import HybridFakeRunner

    windows = [None, 6]
    sched = make_scheduler(
        num_blocks=40,
        num_cpu_blocks=200,  # every group's evicted pages
        host_tier=True,
        kv_cache_groups=windows,
        max_model_len=80,
    )
    runner = HybridFakeRunner(BS, windows)
    first = _turn(sched, runner, "a0", _conversation(0))
    for i in range(1, 7):  # the full group's pages of a0 are evicted
        _turn(sched, runner, f"b{i}", _conversation(i, 40))
    history = first.all_token_ids
    second = _turn(sched, runner, "a1", history + [401, 402])  # reads checked per group
    assert second.num_cached_tokens >= 0.9 * (len(history) - 1)
    assert sched.kv_manager.tiers.stats.host_hit_blocks > 0
    kv = sched.kv_manager
    assert kv.num_free_blocks == kv.num_blocks
    kv.host.check()
