"""Hybrid models' step inputs: table snapshots, the runner's row cache, grouped metadata.

A hybrid step hands the runner one table per KV cache group and request. The scheduler hands
out snapshots (``GroupTable.ids()``, the same tuple while a table does not change) and the
runner reuses its numpy rows for them (``GroupTableRows``): both must give exactly what
building every table from scratch gives, at every step, while tables grow, free their window
and get copied on write.
"""

from __future__ import annotations

import numpy as np
import torch
from hybrid_fakes import HybridFakeRunner

from pagedllm.attention.metadata import build_metadata
from pagedllm.worker.input_batch import GroupTableRows, prepare_inputs
from test_core_fakes import make_request, make_scheduler


def _scheduler(bs: int = 4, window: int = 8):
    return make_scheduler(
        num_blocks=200,
        block_size=bs,
        max_model_len=120,
        max_num_batched_tokens=24,
        kv_cache_groups=[None, window, window],
        caching=True,
    )


def test_snapshots_are_reused_until_a_table_changes():
    sched = _scheduler()
    runner = HybridFakeRunner(4, [None, 8, 8])
    sched.add_request(make_request("a", list(range(1, 10)), max_tokens=20))
    seen: list[list[tuple[int, ...]]] = []
    while sched.has_unfinished_requests():
        out = sched.schedule()
        if out.scheduled:
            tables = out.scheduled[0].group_block_tables
            kv = sched.kv_manager
            assert [list(t) for t in tables] == kv.get_block_tables("a")
            seen.append(tables)
        sched.update_from_output(out, runner.execute(out, sched))
    # a decode step that stays inside its blocks hands out the very same objects
    same = [
        all(a is b for a, b in zip(x, y, strict=True)) for x, y in zip(seen, seen[1:], strict=False)
    ]
    assert any(same) and not all(same)
    for x, y, s in zip(seen, seen[1:], same, strict=False):
        if not s:
            assert x != y  # a new snapshot only when the table changed


def _naive(plan, bs: int):
    """Every group's metadata built from scratch (the reference)."""
    q = [len(s.token_ids) for s in plan.scheduled]
    n = [s.start_position + len(s.token_ids) for s in plan.scheduled]
    groups = len(plan.scheduled[0].group_block_tables)
    return [
        build_metadata(q, n, [list(s.group_block_tables[g]) for s in plan.scheduled], bs)
        for g in range(groups)
    ]


def test_cached_rows_equal_a_fresh_build_every_step():
    bs = 4
    sched = _scheduler(bs)
    runner = HybridFakeRunner(bs, [None, 8, 8])
    prompt = [7, 3, 9, 1, 4, 4, 2, 8, 6, 5, 1, 2, 3]
    for i in range(5):
        sched.add_request(make_request(f"r{i}", prompt[: 6 + i] + [i + 20], max_tokens=12 + i))
    rows = GroupTableRows()
    steps = 0
    while sched.has_unfinished_requests():
        out = sched.schedule()
        if out.scheduled:
            got = prepare_inputs(out, bs, torch.device("cpu"), rows).group_metadata
            want = _naive(out, bs)
            assert len(got) == len(want) == 3
            for g, w in zip(got, want, strict=True):
                width = w.block_tables.shape[1]
                assert torch.equal(g.block_tables[:, :width], w.block_tables)
                assert not g.block_tables[:, width:].any()
                assert torch.equal(g.slot_mapping, w.slot_mapping)
                assert torch.equal(g.seq_lens, w.seq_lens)
                assert torch.equal(g.query_start_loc, w.query_start_loc)
                assert g.num_decodes == w.num_decodes
            steps += 1
        sched.update_from_output(out, runner.execute(out, sched))
    assert steps > 10
    # rows of finished requests are not kept
    out = sched.schedule()
    assert not out.scheduled


def test_rows_cache_keeps_only_the_step_requests():
    rows = GroupTableRows()

    class _S:
        def __init__(self, rid, tables):
            self.request_id, self.group_block_tables = rid, tables

    class _Plan:
        def __init__(self, scheduled):
            self.scheduled = scheduled

    a = ((1, 2, 3), (0, 5, 6))
    b = ((7,), (8,))
    first = rows.tables(_Plan([_S("a", a), _S("b", b)]))
    assert first.shape == (2, 2, 3)
    assert np.array_equal(first[:, 1, :1], np.array([[7], [8]]))
    rows.tables(_Plan([_S("a", a)]))
    assert set(rows._rows) == {"a"}
    kept = rows._rows["a"][1]
    # an equal snapshot reuses the row; a changed one is converted again
    rows.tables(_Plan([_S("a", (tuple(a[0]), tuple(a[1])))]))
    assert rows._rows["a"][1] is kept
    out = rows.tables(_Plan([_S("a", (a[0], (0, 5, 9)))]))
    assert out[1, 0].tolist() == [0, 5, 9] and out[0, 0].tolist() == [1, 2, 3]
