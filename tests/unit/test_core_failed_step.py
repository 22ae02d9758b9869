"""A failed step must leave nothing findable in the prefix cache that it was to write.

Blocks are registered in the prefix cache when scheduled (so a request admitted later in the same
step can share them); if the step then fails, those registrations are undone.
"""

from __future__ import annotations

from pagedllm.config import PreemptionMode
from test_core_fakes import FakeRunner, make_request, make_scheduler, run

BS = 4
PROMPT = list(range(100, 114))  # 14 tokens: 3 full blocks (the hit may cover at most 13)


def _hit_tokens(sched, prompt) -> int:
    return sched.kv_manager.get_computed_blocks(make_request("probe", prompt))[1]


def test_failed_step_leaves_no_findable_block():
    sched = make_scheduler(num_blocks=32)
    sched.add_request(make_request("a", PROMPT, max_tokens=3))
    out = sched.schedule()
    assert _hit_tokens(sched, PROMPT) == 12, "registered at scheduling time"
    sched.discard_failed_step(out)
    sched.finish_requests(["a"], status=_error_status())
    assert _hit_tokens(sched, PROMPT) == 0
    assert sched.kv_manager.pool.num_cached_blocks == 0
    # the unwritten blocks are reused first: they head the free queue
    head = sched.kv_manager.pool.free_queue_ids()[:3]
    assert set(head) == set(out.scheduled[0].block_table[:3])


def test_successful_step_keeps_its_registrations():
    sched = make_scheduler(num_blocks=32)
    sched.add_request(make_request("a", PROMPT, max_tokens=3))
    finished = run(sched, FakeRunner(BS))
    assert set(finished) == {"a"}
    assert _hit_tokens(sched, PROMPT) == 12
    assert sched._provisional == {}, "a completed step's record is dropped"


def test_failure_spares_blocks_registered_by_earlier_steps():
    sched = make_scheduler(num_blocks=32, max_num_batched_tokens=8)
    sched.add_request(make_request("a", PROMPT, max_tokens=3))
    runner = FakeRunner(BS)
    first = sched.schedule()  # tokens 0..7: blocks 0 and 1 full
    sched.update_from_output(first, runner.execute(first, sched))
    second = sched.schedule()  # tokens 8..13: block 2 full
    sched.discard_failed_step(second)
    sched.finish_requests(["a"], status=_error_status())
    assert _hit_tokens(sched, PROMPT) == 8, "blocks written by the successful step stay"


def test_swap_in_registrations_are_provisional_too():
    sched = make_scheduler(num_blocks=10, mode=PreemptionMode.SWAP, num_cpu_blocks=16)
    prompts = {f"r{i}": [i + 1] * 4 + list(range(20 + i, 30 + i)) for i in range(4)}
    runner = FakeRunner(BS)
    for rid, prompt in prompts.items():
        sched.add_request(make_request(rid, prompt, max_tokens=12))
    swapped_in = None
    for _ in range(200):
        out = sched.schedule()
        if out.swapped_in_ids:
            swapped_in = out
            break
        sched.update_from_output(out, runner.execute(out, sched))
    assert swapped_in is not None, "the pool was meant to force a swap out and back in"
    rid = swapped_in.swapped_in_ids[0]
    blocks = set(sched.kv_manager.get_block_table(rid))
    assert any(b.block_hash is not None for b in _blocks(sched, blocks))
    sched.discard_failed_step(swapped_in)
    assert all(b.block_hash is None for b in _blocks(sched, blocks))


def _blocks(sched, ids):
    return [sched.kv_manager.pool.blocks[i] for i in ids]


def _error_status():
    from pagedllm.core.request import RequestStatus

    return RequestStatus.FINISHED_ERROR
