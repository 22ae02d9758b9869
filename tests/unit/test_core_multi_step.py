"""Multi-step decoding in the core: when rounds of several decode steps are scheduled, and that
they give exactly the tokens of single steps, stop on time and leak nothing."""

from __future__ import annotations

import pytest

from pagedllm.core.scheduler import Scheduler
from test_core_fakes import FakeRunner, check_pool, check_step, make_request, make_scheduler

BS = 4


def _run(sched: Scheduler, runner: FakeRunner) -> tuple[dict[str, list[int]], list[int]]:
    """Step until idle; returns each request's tokens and the num_steps of every round."""
    finished: dict[str, list[int]] = {}
    rounds: list[int] = []
    for _ in range(500):
        if not sched.has_unfinished_requests():
            return finished, rounds
        out = sched.schedule()
        check_step(sched, out)
        rounds.append(out.num_steps)
        for req in sched.update_from_output(out, runner.execute(out, sched)):
            if req.is_finished:
                finished[req.request_id] = list(req.all_token_ids)
        check_pool(sched.kv_manager)
    raise AssertionError("did not finish")


def _workload(**params) -> list:
    return [
        make_request(f"r{i}", list(range(1, 3 + 3 * i)), max_tokens=5 + 2 * i, **params)
        for i in range(4)
    ]


@pytest.mark.parametrize("steps", [2, 3, 8])
def test_rounds_give_the_tokens_of_single_steps(steps):
    single = make_scheduler(num_blocks=40, block_size=BS)
    for r in _workload():
        single.add_request(r)
    expected, single_rounds = _run(single, FakeRunner(BS))
    assert set(single_rounds) == {1}
    multi = make_scheduler(num_blocks=40, block_size=BS, num_scheduler_steps=steps)
    for r in _workload():
        multi.add_request(r)
    got, rounds = _run(multi, FakeRunner(BS))
    assert got == expected  # same tokens, and tokens past max_tokens were dropped
    assert steps in rounds, "no multi-step round was scheduled"
    assert len(rounds) < len(single_rounds)
    kv = multi.kv_manager
    assert kv.num_free_blocks == kv.num_blocks


def test_no_rounds_while_requests_wait():
    sched = make_scheduler(num_blocks=40, block_size=BS, max_num_seqs=1, num_scheduler_steps=4)
    for r in _workload():
        sched.add_request(r)
    _, rounds = _run(sched, FakeRunner(BS))
    # one request runs at a time; rounds are allowed only once the last one runs alone
    assert 4 in rounds
    first_multi = rounds.index(4)
    assert all(n == 1 for n in rounds[:first_multi])
    assert not sched.waiting


@pytest.mark.parametrize(
    "params",
    [
        {"stop": ["x"]},
        {"logprobs": 1},
        {"presence_penalty": 0.5},
        {"repetition_penalty": 1.2},
        {"min_tokens": 5},
    ],
)
def test_no_rounds_when_sampling_needs_the_host(params):
    sched = make_scheduler(num_blocks=40, block_size=BS, num_scheduler_steps=4)
    for r in _workload(**params):
        sched.add_request(r)
    _, rounds = _run(sched, FakeRunner(BS))
    if params.get("min_tokens"):
        assert all(n == 1 for n in rounds[:5])  # before min_tokens is reached
    else:
        assert set(rounds) == {1}


def test_no_round_past_max_model_len():
    sched = make_scheduler(num_blocks=40, block_size=BS, max_model_len=12, num_scheduler_steps=8)
    sched.add_request(make_request("r", list(range(1, 6)), max_tokens=7))
    got, rounds = _run(sched, FakeRunner(BS))
    assert len(got["r"]) == 12
    assert 8 not in rounds  # 5 + 8 tokens would pass max_model_len
