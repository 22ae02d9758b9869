"""Sequence groups in the scheduler: forks carried in the plan, forks and beams reserved
against max_num_seqs, beams that wait for the engine's token; and the beam-search rule."""

from __future__ import annotations

import math

import pytest

from pagedllm.core.request import Request
from pagedllm.engine.beam_search import BeamSearch, BeamSearchParams
from test_core_fakes import FakeRunner, check_pool, make_request, make_scheduler, run


def _children(parent: Request, n: int) -> list[Request]:
    return [
        Request(
            f"{parent.request_id}.{i}",
            list(parent.prompt_token_ids),
            parent.sampling_params,
            parent.eos_token_ids,
            max_tokens=parent.max_tokens,
            parent_id=parent.request_id,
            sample_index=i,
        )  # fmt: skip
        for i in range(1, n)
    ]


def test_forks_travel_in_the_plan_and_share_the_prompt_blocks():
    sched = make_scheduler(num_blocks=64)
    parent = make_request("p", list(range(10, 19)), max_tokens=4)
    sched.add_request(parent, forks=_children(parent, 3))
    out = sched.schedule()
    assert out.scheduled[0].fork_ids == ["p.1", "p.2"]
    assert set(out.requests) == {"p", "p.1", "p.2"}
    runner = FakeRunner(4)
    sched.update_from_output(out, runner.execute(out, sched))
    assert {r.request_id for r in sched.running} == {"p", "p.1", "p.2"}
    tables = [sched.kv_manager.get_block_table(r) for r in ("p", "p.1", "p.2")]
    assert tables[0][:2] == tables[1][:2] == tables[2][:2]  # two full prompt blocks shared
    finished = run(sched, runner)
    assert all(len(r.output_token_ids) == 4 for r in finished.values())
    check_pool(sched.kv_manager)
    assert sched.kv_manager.num_free_blocks == sched.kv_manager.num_blocks


def test_forks_count_against_max_num_seqs():
    sched = make_scheduler(num_blocks=64, max_num_seqs=4)
    a = make_request("a", [1, 2, 3], max_tokens=6)
    sched.add_request(a, forks=_children(a, 3))
    b = make_request("b", [4, 5, 6], max_tokens=6)
    sched.add_request(b, forks=_children(b, 3))
    runner = FakeRunner(4)
    for _ in range(3):
        out = sched.schedule()
        assert "b" not in out.requests, "b's 3 sequences do not fit beside a's 3"
        sched.update_from_output(out, runner.execute(out, sched))
        assert len(sched.running) <= 4
    run(sched, runner)
    with pytest.raises(ValueError, match="max_num_seqs"):
        c = make_request("c", [1, 2], max_tokens=2)
        sched.add_request(c, forks=_children(c, 5))


def test_a_beam_waits_for_the_engines_token():
    sched = make_scheduler(num_blocks=64)
    beam = make_request("beam", [1, 2, 3, 4, 5], max_tokens=3)
    beam.num_beam_candidates = 4
    sched.add_request(beam)
    runner = FakeRunner(4)
    out = sched.schedule()
    changed = sched.update_from_output(out, runner.execute(out, sched))
    assert changed == [beam] and beam.output_token_ids == []  # reported, no token appended
    assert not sched.schedule().scheduled  # nothing to compute until the engine chooses
    sched.append_token("beam", 7)
    out = sched.schedule()
    assert [(s.request_id, s.token_ids) for s in out.scheduled] == [("beam", [7])]
    sched.finish_requests(["beam"], beam.status.FINISHED_ABORTED)
    assert sched.kv_manager.num_free_blocks == sched.kv_manager.num_blocks


def test_beam_search_rule_ranks_like_transformers():
    """Two beams over a 3-token vocabulary, EOS = 2, by hand."""
    search = BeamSearch(beam_width=2, max_tokens=3, length_penalty=1.0, eos_token_ids={2})
    lp = math.log
    # step 1 (only the prompt's beam): EOS is the best candidate -> a finished hypothesis
    first = search.step([0.0], [[]], [{2: lp(0.5), 0: lp(0.3), 1: lp(0.2)}])
    assert [(c.parent, c.token) for c in first] == [(0, 0), (0, 1)]
    assert search.finished[0].token_ids == [2] and search.finished[0].score == pytest.approx(
        lp(0.5)
    )
    # step 2: beam 1's EOS ranks 3rd of the 4 candidates: beyond beam_width, not kept
    second = search.step(
        [c.score for c in first], [[0], [1]],
        [{0: lp(0.9), 1: lp(0.05), 2: lp(0.05)}, {1: lp(0.6), 2: lp(0.3), 0: lp(0.1)}],
    )  # fmt: skip
    assert [(c.parent, c.token) for c in second] == [(0, 0), (1, 1)]
    assert len(search.finished) == 1
    assert not search.done
    # step 3 reaches max_tokens: the two best candidates finish by length; ranks are by score
    search.step([c.score for c in second], [[0, 0], [1, 1]], [{0: lp(0.5)}, {1: lp(0.9)}])
    assert search.done
    scores = [h.score for h in search.finished]
    assert scores == sorted(scores, reverse=True) and len(scores) == 2
    # log(.3*.9*.5)/3 = -0.667 beats log(.5) = -0.693, which beats log(.2*.6*.9)/3 = -0.742
    assert [h.token_ids for h in search.finished] == [[0, 0, 0], [2]]
    assert search.finished[0].score == pytest.approx(lp(0.3 * 0.9 * 0.5) / 3)
    assert search.finished[0].cum_logprob == pytest.approx(lp(0.3 * 0.9 * 0.5))
    assert [h.finish_reason for h in search.finished] == ["length", "stop"]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"beam_width": 0}, "beam_width"), ({"beam_width": 2, "max_tokens": 0}, "max_tokens"),
     ({"beam_width": 2, "length_penalty": float("nan")}, "length_penalty")],
)  # fmt: skip
def test_bad_beam_params(kwargs, field):
    with pytest.raises(ValueError, match=field):
        BeamSearchParams(**kwargs)
