"""``AsyncMPEngine`` against the in-process ``LLMEngine``: the same outputs through the core
process (tiny dummy-weight model, float32, greedy), and the errors a caller sees."""

from __future__ import annotations

import asyncio
import json

import pytest
from test_bench_serve import TINY_QWEN3

pytest.importorskip("zmq")
pytest.importorskip("msgspec")

# tests/server is on sys.path (rootless test modules)
TINY = dict(TINY_QWEN3, vocab_size=512, max_position_embeddings=256)


def _config(path):
    from pagedllm.config import CacheConfig, EngineConfig, ModelSpec, SchedulerConfig

    return EngineConfig(
        model=ModelSpec(model=str(path), load_format="dummy", device="cpu", dtype="float32"),
        cache=CacheConfig(kv_cache_memory=16 << 20),
        scheduler=SchedulerConfig(max_model_len=128),
    ).validate()


def _cases():
    from pagedllm.engine.beam_search import BeamSearchParams
    from pagedllm.sampling_params import SamplingParams

    greedy = {"temperature": 0.0, "max_tokens": 12, "ignore_eos": True}
    return {
        "plain": SamplingParams(**greedy),
        "n2_logprobs": SamplingParams(**greedy, n=2, logprobs=2, prompt_logprobs=1),
        "stop": SamplingParams(**greedy, stop=["<7>"]),
        "beam": BeamSearchParams(beam_width=2, max_tokens=6),
    }


def _summary(outputs):
    """Every output's user-visible content, deltas joined (what a stream shows)."""
    final = outputs[-1]
    deltas = {}
    for out in outputs:
        for c in out.outputs:
            deltas[c.index] = deltas.get(c.index, "") + c.delta_text
    return [
        (c.index, c.text, list(c.token_ids), c.finish_reason, c.stop_reason,
         None if c.logprobs is None else len(c.logprobs),
         deltas[c.index] if c.score is None else None)
        for c in final.outputs
    ], final.prompt_logprobs is not None  # fmt: skip


def test_core_process_outputs_match_the_in_process_engine(tmp_path) -> None:
    from pagedllm.engine.core_client import AsyncMPEngine
    from pagedllm.engine.llm_engine import LLMEngine

    (tmp_path / "config.json").write_text(json.dumps(TINY))
    prompt = [5, 9, 17, 33, 65, 129, 7]
    reference = LLMEngine(_config(tmp_path))
    expected = {}
    for name, params in _cases().items():
        reference.add_request(name, None, params, prompt_token_ids=prompt)
        outs = []
        while reference.has_unfinished_requests():
            outs += [o for o in reference.step() if o.request_id == name]
        expected[name] = _summary(outs)

    async def run(engine: AsyncMPEngine) -> dict:
        got = {}
        for name, params in _cases().items():
            got[name] = _summary([o async for o in engine.generate(None, params, name, prompt)])
        with pytest.raises(ValueError, match="outside the vocabulary"):
            await engine.add_request("bad", None, _cases()["plain"], [10_000])
        with pytest.raises(ValueError, match="already in use"):
            await engine.add_request("dup", None, _cases()["plain"], prompt)
            await engine.add_request("dup", None, _cases()["plain"], prompt)
        return got

    engine = AsyncMPEngine.from_config(_config(tmp_path))
    try:
        got = asyncio.run(run(engine))
        assert engine.stats() is not None
    finally:
        engine.shutdown()
    assert not engine.process.is_alive()
    assert got == expected
