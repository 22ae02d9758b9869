"""AUTO preemption: the swap-vs-recompute cost model and the scheduler's use of it."""

from __future__ import annotations

import pytest

from pagedllm.config import PreemptionMode
from pagedllm.core.preemption import PreemptionCosts
from test_core_fakes import FakeRunner, make_request, make_scheduler, run


def test_cost_model_compares_copy_time_with_prefill_time():
    costs = PreemptionCosts(bytes_per_block=1000, swap_bytes_per_s=1e6, prefill_tokens_per_s=100)
    assert costs.swap_seconds(5) == pytest.approx(0.01)  # out and back in
    assert costs.recompute_seconds(20) == pytest.approx(0.2)
    assert costs.prefer_swap(5, 20)
    assert not costs.prefer_swap(500, 2)  # 1 s of copying vs 0.02 s of prefill
    assert not PreemptionCosts().prefer_swap(1, 1000), "unmeasured: recompute"


def test_observe_step_keeps_prefill_heavy_steps_only():
    costs = PreemptionCosts()
    costs.observe_step(num_prefill_tokens=4, num_tokens=40, seconds=1.0)  # decode-heavy
    assert costs.prefill_tokens_per_s == 0
    costs.observe_step(num_prefill_tokens=100, num_tokens=100, seconds=0.5)
    assert costs.prefill_tokens_per_s == pytest.approx(200)
    costs.observe_step(num_prefill_tokens=100, num_tokens=100, seconds=0.25)
    assert 200 < costs.prefill_tokens_per_s < 400  # moving average


def _run_auto(costs: PreemptionCosts):
    sched = make_scheduler(num_blocks=12, mode=PreemptionMode.AUTO, num_cpu_blocks=16)
    sched.preemption_costs = costs
    for i in range(6):
        prompt = [i + 1] * 3 + list(range(10, 15 + 3 * i))
        sched.add_request(make_request(f"r{i}", prompt, max_tokens=12))
    finished = run(sched, FakeRunner(sched.block_size))
    assert len(finished) == 6
    assert sched.kv_manager.num_free_blocks == sched.kv_manager.num_blocks
    assert sched.kv_manager.num_cpu_free_blocks == 16
    assert sched.num_preemptions > 0
    return sched


def test_auto_swaps_when_copying_is_cheaper_and_recomputes_otherwise():
    cheap_copy = _run_auto(PreemptionCosts(1, swap_bytes_per_s=1e15, prefill_tokens_per_s=1e-3))
    assert cheap_copy.num_swap_outs == cheap_copy.num_preemptions
    assert cheap_copy.num_blocks_swapped_in == cheap_copy.num_blocks_swapped_out > 0
    slow_copy = _run_auto(PreemptionCosts(1000, swap_bytes_per_s=1e-3, prefill_tokens_per_s=1e12))
    assert slow_copy.num_swap_outs == 0 and slow_copy.num_blocks_swapped_out == 0
