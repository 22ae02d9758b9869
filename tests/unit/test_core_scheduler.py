"""Scheduler: budgets, chunked prefill, preemption (recompute and swap), aborts, bad input."""

from __future__ import annotations

import pytest

from pagedllm.config import PreemptionMode
from pagedllm.core.request import RequestStatus
from test_core_fakes import FakeRunner, check_pool, make_request, make_scheduler, run

BS = 4


def _prompts(n: int) -> dict[str, list[int]]:
    return {f"r{i}": [i + 1] * 3 + list(range(10, 10 + 5 + 3 * i)) for i in range(n)}


def _outputs(sched, prompts, max_tokens=12) -> dict[str, list[int]]:
    for rid, prompt in prompts.items():
        sched.add_request(make_request(rid, prompt, max_tokens=max_tokens))
    finished = run(sched, FakeRunner(sched.block_size))
    assert sched.kv_manager.num_free_blocks == sched.kv_manager.num_blocks
    assert sched.kv_manager.usage() == 0.0
    return {rid: r.output_token_ids for rid, r in finished.items()}


@pytest.mark.parametrize("mode", [PreemptionMode.RECOMPUTE, PreemptionMode.SWAP])
def test_preemption_gives_the_same_outputs_as_no_pressure(mode):
    prompts = _prompts(6)
    reference = _outputs(make_scheduler(num_blocks=200), prompts)
    tight = make_scheduler(num_blocks=12, mode=mode, num_cpu_blocks=16)
    assert _outputs(tight, prompts) == reference
    assert tight.num_preemptions > 0
    assert all(len(v) == 12 for v in reference.values())


def test_chunked_prefill_respects_budget_and_mixes_with_decodes():
    sched = make_scheduler(num_blocks=64, max_num_batched_tokens=8)
    sched.add_request(make_request("short", [1, 2, 3], max_tokens=5))
    runner = FakeRunner(BS)
    out = sched.schedule()
    sched.update_from_output(out, runner.execute(out, sched))
    sched.add_request(make_request("long", list(range(5, 30)), max_tokens=2))
    out = sched.schedule()
    assert [(s.request_id, len(s.token_ids)) for s in out.scheduled] == [("short", 1), ("long", 7)]
    assert out.num_decodes == 1 and not out.scheduled[1].sample
    sched.update_from_output(out, runner.execute(out, sched))
    out = sched.schedule()
    assert out.scheduled[1].start_position == 7 and out.num_batched_tokens == 8
    finished = run(sched, runner)
    assert set(finished) == {"short", "long"}


def test_without_chunked_prefill_whole_prompts_only():
    sched = make_scheduler(num_blocks=64, max_num_batched_tokens=64, chunked=False)
    for i in range(3):
        sched.add_request(make_request(f"r{i}", [i + 1] + list(range(29)), max_tokens=2))
    out = sched.schedule()
    assert [len(s.token_ids) for s in out.scheduled] == [30, 30]  # the third waits
    assert sched.num_waiting == 1 and sched.num_running == 2


def test_max_num_seqs_limits_the_batch():
    sched = make_scheduler(num_blocks=64, max_num_seqs=2)
    for i in range(4):
        sched.add_request(make_request(f"r{i}", [1, 2, i], max_tokens=3))
    out = sched.schedule()
    assert len(out.scheduled) == 2 and sched.num_waiting == 2


def test_abort_anywhere_and_ignore_late_tokens():
    sched = make_scheduler(num_blocks=32)
    runner = FakeRunner(BS)
    for i in range(3):
        sched.add_request(make_request(f"r{i}", list(range(1, 7)), max_tokens=20))
    out = sched.schedule()
    sampled = runner.execute(out, sched)
    assert sched.abort_request("r1")  # aborted between schedule and update
    changed = sched.update_from_output(out, sampled)
    assert {r.request_id for r in changed} == {"r0", "r2"}
    assert sched.abort_request("r0") and not sched.abort_request("r0")
    assert not sched.abort_request("never-added")
    nxt = sched.schedule()
    assert set(nxt.finished_ids) == {"r1", "r0"}
    assert [s.request_id for s in nxt.scheduled] == ["r2"]
    sched.finish_requests(["r2"], RequestStatus.FINISHED_STOPPED)  # e.g. a stop string
    assert not sched.has_unfinished_requests()
    check_pool(sched.kv_manager)
    assert sched.kv_manager.num_free_blocks == 32


def test_abort_waiting_and_preempted():
    sched = make_scheduler(num_blocks=6, max_num_batched_tokens=64)
    for i in range(4):
        sched.add_request(make_request(f"r{i}", list(range(1, 8)), max_tokens=12))
    runner = FakeRunner(BS)
    for _ in range(30):
        out = sched.schedule()
        sched.update_from_output(out, runner.execute(out, sched))
        if sched.num_preemptions:
            break
    preempted = [r for r in sched.waiting if r.status == RequestStatus.PREEMPTED]
    assert preempted and preempted[0].num_computed_tokens == 0
    for r in list(sched.waiting):
        assert sched.abort_request(r.request_id)
    run(sched, runner)
    assert sched.kv_manager.num_free_blocks == 6


def test_scheduler_fork_shares_prompt_blocks():
    sched = make_scheduler(num_blocks=64)
    runner = FakeRunner(BS)
    parent = make_request("p", list(range(1, 11)), max_tokens=4)
    sched.add_request(parent)
    out = sched.schedule()
    sched.update_from_output(out, runner.execute(out, sched))
    for i in range(1, 4):
        child = make_request(f"p-{i}", parent.all_token_ids[:10] + [50 + i], max_tokens=4)
        sched.fork_request("p", child)
    shared = sched.kv_manager.get_block_table("p")
    for i in range(1, 4):
        assert sched.kv_manager.get_block_table(f"p-{i}") == shared
    out = sched.schedule()
    assert out.num_decodes == 4
    # parent and 3 children all write into the shared partial third block: 3 copies, the
    # last writer finds it private
    assert len(out.blocks_to_copy) == 3 and {s for s, _ in out.blocks_to_copy} == {shared[2]}
    sched.update_from_output(out, runner.execute(out, sched))
    assert len(run(sched, runner)) == 4
    assert sched.kv_manager.num_free_blocks == 64


def test_bad_input():
    sched = make_scheduler(num_blocks=4, block_size=4, max_model_len=64)
    sched.add_request(make_request("a", [1, 2, 3], max_tokens=4))
    with pytest.raises(ValueError, match="already in use"):
        sched.add_request(make_request("a", [1, 2, 3], max_tokens=4))
    with pytest.raises(ValueError, match="max_tokens"):
        sched.add_request(make_request("big", list(range(10)), max_tokens=10))
    with pytest.raises(ValueError, match="max_model_len"):
        sched.add_request(make_request("long", list(range(65)), max_tokens=1))
    assert not sched.abort_request("unknown")
    with pytest.raises(ValueError, match="block_size"):
        make_scheduler(num_blocks=4, block_size=0)
    assert sched.num_waiting == 1
