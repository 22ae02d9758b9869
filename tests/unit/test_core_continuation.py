"""Async scheduling in the core: when a continuation round is planned before the previous
round's results are applied, which rows it holds, and that draining with continuations gives
the tokens of ordinary scheduling and leaks nothing."""

from __future__ import annotations

import pytest

from pagedllm.core.request import RequestStatus
from pagedllm.core.scheduler import Scheduler
from test_core_fakes import (
    FakeRunner,
    check_continuation,
    check_pool,
    make_request,
    make_scheduler,
    run,
    run_async,
)

BS = 4


def _workload(**params) -> list:
    return [
        make_request(f"r{i}", list(range(1, 3 + 3 * i)), max_tokens=5 + 2 * i, **params)
        for i in range(4)
    ]


def _decoding(sched: Scheduler, runner: FakeRunner):
    """Step until the batch is pure decode; return that step's output and its results."""
    for _ in range(50):
        out = sched.schedule()
        sampled = runner.execute(out, sched)
        if out.num_decodes == len(out.scheduled) == len(sched.running):
            return out, sampled
        sched.update_from_output(out, sampled)
    raise AssertionError("never reached a pure decode step")


@pytest.mark.parametrize("steps", [1, 3])
def test_draining_with_continuations_gives_the_same_tokens(steps):
    results = []
    for drain in (run, run_async):
        sched = make_scheduler(num_blocks=40, block_size=BS, num_scheduler_steps=steps)
        for r in _workload():
            sched.add_request(r)
        planned = []
        plan = sched.schedule_continuation
        sched.schedule_continuation = lambda prev, plan=plan, planned=planned: (
            planned.append(plan(prev)) or planned[-1]
        )
        finished = drain(sched, FakeRunner(BS))
        results.append({rid: r.all_token_ids for rid, r in finished.items()})
        kv = sched.kv_manager
        assert kv.num_free_blocks == kv.num_blocks and not kv.request_ids()
    assert results[0] == results[1]
    assert any(p is not None for p in planned), "no continuation was planned"


def test_continuation_rows_skip_requests_that_stop_by_length():
    sched = make_scheduler(num_blocks=40, block_size=BS, num_scheduler_steps=2)
    for r in _workload():
        sched.add_request(r)
    runner = FakeRunner(BS)
    out, _ = _decoding(sched, runner)
    # r0 (max_tokens 5) has 1 token; make it one short of its limit before this round
    r0 = sched.get_request("r0")
    r0.max_tokens = r0.num_output_tokens + out.num_steps
    following = sched.schedule_continuation(out)
    assert following is not None
    check_continuation(sched, out, following)
    assert [s.request_id for s in following.scheduled] == ["r1", "r2", "r3"]
    assert [s.prev_row for s in following.scheduled] == [1, 2, 3]


def test_no_continuation_when_unpredictable():
    sched = make_scheduler(num_blocks=40, block_size=BS)
    for r in _workload():
        sched.add_request(r)
    runner = FakeRunner(BS)
    out, _ = _decoding(sched, runner)
    sched.add_request(make_request("late", [1, 2, 3]))  # a waiting request: admit it first
    assert sched.schedule_continuation(out) is None
    sched.finish_requests(["late"], RequestStatus.FINISHED_ABORTED)
    sched.get_request("r1").sampling_params.presence_penalty = 0.5  # per-token host work
    assert sched.schedule_continuation(out) is None
    sched.get_request("r1").sampling_params.presence_penalty = 0.0
    assert sched.schedule_continuation(out) is not None
    check_pool(sched.kv_manager)


def test_no_continuation_without_free_blocks():
    # block size 1: every continuation row needs one more block beyond the round in flight
    sched = make_scheduler(num_blocks=80, block_size=1, watermark=0.0)
    for r in _workload():
        sched.add_request(r)
    runner = FakeRunner(1)
    out, _ = _decoding(sched, runner)
    kv = sched.kv_manager
    hold = kv.pool.get_new_blocks(kv.num_free_blocks - 3)  # 3 blocks for 4 rows
    assert sched.schedule_continuation(out) is None
    kv.pool.free_blocks(hold[:1])
    following = sched.schedule_continuation(out)
    assert following is not None and kv.num_free_blocks == 0
    kv.pool.free_blocks(hold[1:])
    check_continuation(sched, out, following)
