"""Async scheduling (a decode round planned and launched before the previous one's tokens are
back) gives exactly the tokens of ordinary scheduling, and gives back every block.

On CPU the runner works synchronously, so these tests check the bookkeeping: continuation
slots, inputs read from the previous round's sampled tokens, requests that stop inside the
round in flight (EOS or length), aborts while a round is in flight, multi-step rounds.
"""

from __future__ import annotations

import pytest

from e2e_utils import MAX_NEW, assert_all_blocks_free, hf_greedy
from pagedllm import LLM, SamplingParams

GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_NEW)


def _async_llm(**options) -> tuple[LLM, list[int]]:
    """An LLM with async scheduling on, recording the size of every continuation it plans."""
    llm = LLM(dtype="float32", block_size=16, kv_cache_memory=64 << 20, async_scheduling=True,
              **options)  # fmt: skip
    assert llm.engine.async_scheduling
    sizes: list[int] = []
    plan = llm.engine.scheduler.schedule_continuation

    def recording(prev):
        out = plan(prev)
        if out is not None:
            sizes.append(len(out.scheduled))
        return out

    llm.engine.scheduler.schedule_continuation = recording
    return llm, sizes


@pytest.mark.parametrize("steps", [1, 3])
def test_async_greedy_matches_transformers(steps, chat_prompts, hf_model):
    llm, sizes = _async_llm(num_scheduler_steps=steps)
    # mixed max_tokens: requests leave the batch at different rounds (length stops)
    params = [SamplingParams(temperature=0.0, max_tokens=MAX_NEW - (i % 4)) for i in range(8)]
    outputs = llm.generate(chat_prompts, params, use_tqdm=False)
    for prompt, p, out in zip(chat_prompts, params, outputs, strict=True):
        want = hf_greedy(hf_model, prompt)[: p.max_tokens]
        assert out.outputs[0].token_ids == want
    assert sizes, "no continuation was ever scheduled"
    assert len(set(sizes)) > 1, "the batch was meant to shrink as requests finished"
    assert_all_blocks_free(llm)


def test_async_matches_sync_with_eos_stops_and_seeds(chat_prompts):
    """Requests stopping on EOS inside an in-flight round; seeded sampling is unchanged."""
    params = [
        SamplingParams(temperature=0.8, seed=7 + i, max_tokens=40) if i % 2 else
        SamplingParams(temperature=0.0, max_tokens=40)
        for i in range(len(chat_prompts))
    ]  # fmt: skip
    sync = LLM(dtype="float32", block_size=16, kv_cache_memory=64 << 20, async_scheduling=False)
    want = [o.outputs[0] for o in sync.generate(chat_prompts, params, use_tqdm=False)]
    assert any(o.finish_reason == "stop" for o in want), "some request should stop on EOS"
    llm, sizes = _async_llm(num_scheduler_steps=2)
    got = [o.outputs[0] for o in llm.generate(chat_prompts, params, use_tqdm=False)]
    for a, b in zip(got, want, strict=True):
        assert (a.token_ids, a.finish_reason, a.text) == (b.token_ids, b.finish_reason, b.text)
    assert sizes
    assert_all_blocks_free(llm)


def test_abort_while_a_round_is_in_flight(chat_prompts):
    llm, sizes = _async_llm()
    engine = llm.engine
    params = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True)
    for i, prompt in enumerate(chat_prompts[:4]):
        engine.add_request(f"r{i}", None, params, prompt_token_ids=prompt)
    finished: dict[str, str] = {}
    aborted = False
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = out.outputs[0].finish_reason
        if not aborted and engine._in_flight is not None:
            engine.abort_request(["r1", "r2"])
            aborted = True
    assert aborted and sizes
    assert finished == {"r0": "length", "r1": "abort", "r2": "abort", "r3": "length"}
    assert_all_blocks_free(llm)


def test_continuation_not_planned_when_requests_wait(chat_prompts):
    """A waiting request is admitted by ordinary scheduling, never skipped by continuations."""
    llm, sizes = _async_llm(max_num_seqs=2)
    scheduler = llm.engine.scheduler
    plan = scheduler.schedule_continuation
    queued_when_planned: list[int] = []

    def checking(prev):
        out = plan(prev)
        if out is not None:
            queued_when_planned.append(scheduler.num_waiting + scheduler.num_swapped)
        return out

    scheduler.schedule_continuation = checking
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    outputs = llm.generate(chat_prompts[:5], params, use_tqdm=False)
    assert [len(o.outputs[0].token_ids) for o in outputs] == [8] * 5
    assert queued_when_planned and not any(queued_when_planned)
    assert_all_blocks_free(llm)


def test_failure_in_a_continuation_fails_its_requests_only(chat_prompts, monkeypatch):
    llm, sizes = _async_llm()
    model = llm.engine.runner.model
    real_forward = model.forward
    calls = {"n": 0}

    def flaky_forward(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # a continuation round: launched while round 3 is in flight
            raise RuntimeError("boom in a continuation")
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", flaky_forward)
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    outs = llm.generate(chat_prompts[:3], params, use_tqdm=False)
    assert sizes, "the failure was meant to hit a continuation"
    for out in outs:
        assert out.finished and out.outputs[0].finish_reason == "error"
        assert "boom in a continuation" in out.error
        assert 0 < len(out.outputs[0].token_ids) < 12
    assert_all_blocks_free(llm)
    monkeypatch.setattr(model, "forward", real_forward)
    again = llm.generate(chat_prompts[:3], params, use_tqdm=False)
    assert all(len(o.outputs[0].token_ids) == 12 for o in again)
    assert_all_blocks_free(llm)
