"""Property tests: random add / step / fork / abort / finish sequences keep the pool sound.

Checked on every step (by the fake runner and ``check_step``): every scheduled token has a
slot, no shared partly filled block is ever written, ref counts equal table references and are
never negative, free blocks are exactly those at ref 0, the token budget and max_num_seqs hold,
and every KV read returns the request's own tokens. At the end: every request finished within a
bounded number of steps, and the whole pool is free again.
"""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

from pagedllm.config import PreemptionMode
from pagedllm.core.request import RequestStatus
from test_core_fakes import (
    FakeRunner,
    check_step,
    make_request,
    make_scheduler,
    run,
    run_async,
)

PREFIXES = [[], [7, 7, 7, 7, 7], [1, 2, 3, 4, 5, 6, 7, 8, 9]]

config_st = st.fixed_dictionaries(
    {
        "block_size": st.sampled_from([1, 2, 4, 5]),
        "num_blocks": st.integers(4, 24),
        "max_num_seqs": st.integers(1, 6),
        "max_num_batched_tokens": st.integers(8, 40),
        "chunked": st.booleans(),
        "caching": st.booleans(),
        "mode": st.sampled_from(list(PreemptionMode)),
        "num_cpu_blocks": st.sampled_from([0, 6, 40]),
        "num_scheduler_steps": st.sampled_from([1, 1, 3]),
        "async_scheduling": st.booleans(),
    }
)
op_st = st.one_of(
    st.tuples(
        st.just("add"),
        st.sampled_from(range(3)),
        st.integers(1, 10),
        st.integers(1, 12),
        st.integers(1, 3),
    ),
    st.tuples(st.just("step")),
    st.tuples(st.just("step")),
    st.tuples(st.just("abort"), st.integers(0, 30)),
    st.tuples(st.just("finish"), st.integers(0, 30)),
    st.tuples(st.just("fork"), st.integers(0, 30)),
    st.tuples(st.just("fork"), st.integers(0, 30)),
)
STATS = {"steps": 0, "forks": 0, "preemptions": 0, "copies": 0, "hits": 0}


def _step(sched, runner):
    out = sched.schedule()
    check_step(sched, out)
    STATS["steps"] += 1
    STATS["copies"] += len(out.blocks_to_copy)
    sched.update_from_output(out, runner.execute(out, sched))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config_st, st.lists(op_st, min_size=10, max_size=40))
def test_random_operations_keep_the_pool_sound(cfg, ops):
    if not cfg["chunked"]:
        cfg["max_num_batched_tokens"] = 40  # >= max_model_len, required without chunking
    async_scheduling = cfg.pop("async_scheduling")
    sched = make_scheduler(max_model_len=40, **cfg)
    runner = FakeRunner(cfg["block_size"])
    ids: list[str] = []
    total_tokens = 0
    for op in ops:
        if op[0] == "add":
            _, prefix, extra, max_tokens, fill = op
            rid = f"r{len(ids)}"
            prompt = PREFIXES[prefix] + [fill] * extra
            try:
                sched.add_request(make_request(rid, prompt, max_tokens=max_tokens))
            except ValueError:
                need = -(-min(len(prompt) + max_tokens, 40) // cfg["block_size"])
                assert need > cfg["num_blocks"]
                continue
            ids.append(rid)
            total_tokens += len(prompt) + max_tokens
        elif op[0] == "step":
            _step(sched, runner)
        elif ids and op[0] in ("abort", "finish"):
            rid = ids[op[1] % len(ids)]
            if op[0] == "abort":
                known = rid in sched.requests
                assert sched.abort_request(rid) == known
            else:
                sched.finish_requests([rid], RequestStatus.FINISHED_STOPPED)
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
            STATS["forks"] += 1
            total_tokens += child.num_tokens + 3
    # no starvation: everything finishes within a bound on the steps
    drain = run_async if async_scheduling else run
    drain(sched, runner, max_steps=20 * total_tokens + 50)
    kv = sched.kv_manager
    STATS["preemptions"] += sched.num_preemptions
    STATS["hits"] += kv.prefix_cache_hits
    assert kv.num_free_blocks == kv.num_blocks and kv.usage() == 0.0
    assert kv.num_cpu_free_blocks == cfg["num_cpu_blocks"]
    assert not kv.request_ids()
    assert sched.num_running == sched.num_waiting == sched.num_swapped == 0
