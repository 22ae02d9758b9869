"""Faults injected into a running engine (bundled model, float32, greedy) under concurrent load.

A model forward, the sampler (a whole step, or one request's sampling state), a KV block copy
and one request's detokenizer are made to fail at a chosen call, by monkeypatching. Each time:
the engine keeps serving, only the affected requests fail (finish_reason "error" with the
injected message), no KV block leaks, the unaffected requests' tokens equal a fault-free
engine's, and the failed prompts, sent again, are answered correctly (no cached block serves KV
that a failed step never wrote).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest

from pagedllm.engine.detokenizer import IncrementalDetokenizer
from pagedllm.sampling_params import SamplingParams

MAX_TOKENS = 6
GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
_ids = itertools.count()


def _engine() -> Any:
    from pagedllm.config import EngineConfig
    from pagedllm.engine.llm_engine import LLMEngine

    # few sequences per step, so later requests wait while earlier ones run (and fail)
    config = EngineConfig.from_flat(
        device="cpu",
        dtype="float32",
        block_size=16,
        kv_cache_memory=32 << 20,
        max_num_seqs=2,
        max_model_len=512,
    )
    return LLMEngine.from_config(config)


@pytest.fixture(scope="module")
def engines() -> tuple[Any, Any]:
    """(the engine faults are injected into, a reference engine that never fails)."""
    return _engine(), _engine()


def _prompts(tag: str, n: int = 4) -> list[str]:
    # a shared system part of several full blocks (prefix-cache hits), unique to each test so
    # blocks cached by earlier tests do not hide a poisoned cache
    system = f"[{tag}] You are a terse assistant of the {tag} team. " * 3
    return [system + f"Question {i}: what is {i} plus {i + 1}?" for i in range(n)]


def _run(engine: Any, prompts: list[str], params: list[SamplingParams] | None = None) -> list:
    """Queue every prompt at once, step until done; the final output of each, in order."""
    rids = [f"r{next(_ids)}" for _ in prompts]
    for i, (rid, prompt) in enumerate(zip(rids, prompts, strict=True)):
        engine.add_request(rid, prompt, params[i] if params else GREEDY, stream=False)
    finals: dict[str, Any] = {}
    for _ in range(10_000):
        if not engine.has_unfinished_requests():
            break
        for out in engine.step():
            if out.finished:
                finals[out.request_id] = out
    assert not engine.has_unfinished_requests()
    return [finals[rid] for rid in rids]


def _assert_no_leak(engine: Any) -> None:
    kv = engine.scheduler.kv_manager
    assert kv.num_free_blocks == kv.num_blocks, "KV blocks leaked"
    assert kv.usage() == 0.0


def _fail_on_call(n: int, fn: Callable, when: Callable[..., bool] = lambda *a, **k: True):
    """``fn`` wrapped to raise on the ``n``-th call that satisfies ``when`` (1-based)."""
    calls = 0

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        if when(*args, **kwargs):
            calls += 1
            if calls == n:
                raise RuntimeError("injected fault")
        return fn(*args, **kwargs)

    return wrapper


def _check(engines: tuple[Any, Any], prompts: list[str], outs: list, expect_failed: int | None):
    """Failed ones carry the injected error; the others match the reference; nothing leaks;
    the failed prompts, sent again without the fault, match the reference too."""
    engine, ref_engine = engines
    ref = _run(ref_engine, prompts)
    failed = [i for i, o in enumerate(outs) if o.outputs[0].finish_reason == "error"]
    assert failed, "the fault did not fail any request"
    if expect_failed is not None:
        assert len(failed) == expect_failed, failed
    assert len(failed) < len(prompts), "one fault failed every request"
    for i, out in enumerate(outs):
        if i in failed:
            assert "injected fault" in (out.error or ""), out.error
        else:
            assert out.outputs[0].token_ids == ref[i].outputs[0].token_ids, i
    _assert_no_leak(engine)
    again = _run(engine, [prompts[i] for i in failed])
    assert [o.outputs[0].token_ids for o in again] == [ref[i].outputs[0].token_ids for i in failed]
    _assert_no_leak(engine)


@pytest.mark.parametrize("call", [1, 3])  # 1: the first prefill (blocks being cached); 3: decode
def test_model_forward_fails_mid_model(engines, monkeypatch, call: int) -> None:
    engine = engines[0]
    layer = engine.runner.model.model.layers[1]  # layer 0 has written its KV by then
    monkeypatch.setattr(layer, "forward", _fail_on_call(call, layer.forward))
    prompts = _prompts(f"forward{call}")
    outs = _run(engine, prompts)
    monkeypatch.undo()
    _check(engines, prompts, outs, expect_failed=None)


def test_sampler_fails_for_a_whole_step(engines, monkeypatch) -> None:
    engine = engines[0]
    rows = engine.runner.rows  # the runner's row sampler owns the Sampler
    monkeypatch.setattr(rows, "sampler", _fail_on_call(2, rows.sampler))
    prompts = _prompts("sampler")
    outs = _run(engine, prompts)
    monkeypatch.undo()
    _check(engines, prompts, outs, expect_failed=None)


def test_one_requests_sampling_state_fails_only_that_request(engines, monkeypatch) -> None:
    """The runner blames the request whose generator could not be made; the others of that
    batch run again next step instead of failing with it."""
    engine = engines[0]
    prompts = _prompts("generator")
    target = engine.tokenizer.encode(prompts[1], add_special_tokens=True)
    rows = engine.runner.rows
    monkeypatch.setattr(
        rows,
        "_generator",
        _fail_on_call(2, rows._generator, lambda r: r.prompt_token_ids == target),
    )
    outs = _run(engine, prompts)
    monkeypatch.undo()
    assert [i for i, o in enumerate(outs) if o.outputs[0].finish_reason == "error"] == [1]
    _check(engines, prompts, outs, expect_failed=1)


def test_kv_block_copy_fails(engines, monkeypatch) -> None:
    """A copy-on-write copy (n=2 forks writing into their shared last block) fails."""
    engine = engines[0]
    cache = engine.runner.cache
    monkeypatch.setattr(
        cache, "copy_blocks", _fail_on_call(1, cache.copy_blocks, lambda pairs: bool(pairs))
    )
    prompts = _prompts("copy")
    forked = SamplingParams(n=2, temperature=0.8, seed=7, max_tokens=MAX_TOKENS, ignore_eos=True)
    params = [forked] + [GREEDY] * (len(prompts) - 1)
    outs = _run(engine, prompts, params)
    monkeypatch.undo()
    assert outs[0].outputs[0].finish_reason == "error"
    assert "injected fault" in outs[0].error
    ref = _run(engines[1], prompts[1:])
    for out, want in zip(outs[1:], ref, strict=True):
        if out.outputs[0].finish_reason != "error":  # the others of the failed step fail too
            assert out.outputs[0].token_ids == want.outputs[0].token_ids
    _assert_no_leak(engine)
    assert all(o.outputs[0].finish_reason == "length" for o in _run(engine, prompts, params))
    _assert_no_leak(engine)


def test_one_requests_detokenizer_fails_only_that_request(engines, monkeypatch) -> None:
    engine = engines[0]
    marker = "never-appears-stop"
    original = IncrementalDetokenizer.add_tokens

    def add_tokens(self: IncrementalDetokenizer, ids: list[int]) -> tuple[str, str | None]:
        if marker in self._stops and len(self.output_token_ids) >= 3:
            raise RuntimeError("injected fault")
        return original(self, ids)

    monkeypatch.setattr(IncrementalDetokenizer, "add_tokens", add_tokens)
    prompts = _prompts("detok")
    params = [GREEDY] * len(prompts)
    params[2] = GREEDY.clone(stop=[marker])
    outs = _run(engine, prompts, params)
    monkeypatch.undo()
    _check(engines, prompts, outs, expect_failed=1)
    assert outs[2].outputs[0].finish_reason == "error"


def test_seed_outside_int64_is_rejected_before_queueing() -> None:
    """seed >= 2**63 (or seed + n - 1 past it) used to raise inside the sampler and fail the
    whole batch; now it is a ValueError at construction (a 400 in the server)."""
    with pytest.raises(ValueError, match="seed"):
        SamplingParams(seed=2**64)
    with pytest.raises(ValueError, match="seed"):
        SamplingParams(seed=2**63 - 2, n=4)
    with pytest.raises(ValueError, match="seed"):
        SamplingParams(seed=-(2**63) - 1)
    SamplingParams(seed=2**63 - 4, n=4)  # the largest that fits
