"""The worker side of the KV tiers on CPU: batched page copies and disk tier files."""

from __future__ import annotations

import logging

import torch

from pagedllm.core.scheduler_output import SchedulerOutput
from pagedllm.worker.cache_engine import CacheEngine, KVCacheSpec, _runs
from pagedllm.worker.disk_tier import DiskEntryError, DiskTier

SPEC = KVCacheSpec(num_layers=3, block_size=4, num_kv_heads=2, head_dim=8, dtype=torch.float32)


def _engine() -> CacheEngine:
    cache = CacheEngine(SPEC, num_blocks=12, num_cpu_blocks=10, device=torch.device("cpu"))
    for t in cache.page_tensors:
        t.copy_(torch.randn_like(t))
    return cache


def test_runs_group_consecutive_pages():
    assert _runs([4, 5, 6, 1, 2, 9]) == [(0, 3, 4), (3, 5, 1), (5, 6, 9)]
    assert _runs([7]) == [(0, 1, 7)]


def test_write_back_then_load_moves_every_layer_of_a_block():
    cache = _engine()
    before = [t.clone() for t in cache.page_tensors]
    cache.to_host([(1, 7), (2, 3), (5, 4)])  # scattered and consecutive host pages
    cache.to_device([(7, 9), (3, 10), (4, 11)])
    for t, old in zip(cache.page_tensors, before, strict=True):
        assert torch.equal(t[:, 9], old[:, 1])
        assert torch.equal(t[:, 10], old[:, 2])
        assert torch.equal(t[:, 11], old[:, 5])
        assert torch.equal(t[:, :9], old[:, :9]), "other blocks untouched"


def test_apply_moves_runs_in_the_plan_order(tmp_path):
    cache = _engine()
    cache.disk = DiskTier(tmp_path, {"model": "x"})
    block1 = [t[:, 1].clone() for t in cache.page_tensors]
    cache.to_host([(2, 0)])  # host page 0 holds block 2, to be spilled to disk
    block2 = [t[:, 2].clone() for t in cache.page_tensors]
    out = SchedulerOutput(
        disk_writes=[(0, "g0-aa")],
        blocks_to_offload=[(1, 0)],  # page 0 reused after its spill
        disk_reads=[("g0-aa", 5)],  # read back into another page the same step
        blocks_to_copy=[(1, 3)],
        blocks_to_load=[(0, 1), (5, 6)],  # block 1 overwritten after its write-back
    )
    cache.apply_moves(out)
    for j, t in enumerate(cache.page_tensors):
        assert torch.equal(t[:, 3], block1[j]) and torch.equal(t[:, 1], block1[j])
        assert torch.equal(t[:, 6], block2[j])


def test_disk_entries_verify_key_checksum_and_name(tmp_path, caplog):
    page = torch.arange(2 * 2 * 4 * 2 * 8, dtype=torch.float32).view(2, 2, 4, 2, 8)
    disk = DiskTier(tmp_path, {"model": "m", "dtype": "float32"})
    disk.write("g0-ab", page)
    disk.write("g1-cd", page + 1)
    nbytes = page.numel() * 4
    assert sorted(disk.scan(nbytes)) == [(0, "ab"), (1, "cd")]
    into = torch.zeros_like(page)
    disk.read("g1-cd", into)
    assert torch.equal(into, page + 1)
    other = DiskTier(tmp_path, {"model": "m", "dtype": "bfloat16"})
    with caplog.at_level(logging.WARNING):
        assert other.scan(nbytes) == [], "another key never matches"
    assert "another model" in caplog.text
    raw = bytearray((tmp_path / "g0-ab.kv").read_bytes())
    raw[-5] ^= 0x10
    (tmp_path / "g0-ab.kv").write_bytes(bytes(raw))
    assert disk.scan(nbytes) == [(1, "cd")], "a flipped byte is skipped"
    try:
        disk.read("g0-ab", into)
    except DiskEntryError:
        pass
    else:
        raise AssertionError("a corrupted entry was served")
    assert not (tmp_path / "g0-ab.kv").exists(), "deleted once found bad"
    (tmp_path / "g2-zz.kv").write_bytes((tmp_path / "g1-cd.kv").read_bytes())
    assert disk.scan(nbytes) == [(1, "cd")], "a file renamed to another key is skipped"


def test_copies_larger_than_the_staging_bound_go_in_chunks(monkeypatch):
    """A batch over ``STAGING_BYTES`` is staged in chunks (and every block still arrives);
    copy timing counts every block once per direction."""
    import pagedllm.worker.cache_engine as ce

    monkeypatch.setattr(ce, "STAGING_BYTES", 2 * SPEC.bytes_per_block)  # 2 blocks a chunk
    cache = _engine()
    assert [len(c) for c in cache._chunks([(i, i) for i in range(5)])] == [2, 2, 1]
    cache.enable_copy_timing()
    before = [t.clone() for t in cache.page_tensors]
    cache.to_host([(b, 9 - b) for b in range(5)])  # device 0..4 -> pages 9..5
    cache.to_device([(9 - b, 11 - b) for b in range(5)])  # back into blocks 11..7
    for t, old in zip(cache.page_tensors, before, strict=True):
        for b in range(5):
            assert torch.equal(t[:, 11 - b], old[:, b])
    timings = cache.copy_timings()
    for kind in ("to_host", "to_device"):
        assert timings[kind]["blocks"] == 5
        assert timings[kind]["bytes"] == 5 * SPEC.bytes_per_block
        assert timings[kind]["seconds"] > 0 and timings[kind]["GBps"] > 0
