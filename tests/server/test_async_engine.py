"""AsyncLLMEngine's own contract, over a scripted engine double (no model needed).

The double only scripts what ``step()`` returns so the failure paths (a step that raises, an
add that is rejected, a consumer that walks away) can be forced; the real engine is exercised
through the HTTP tests.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import pytest

from pagedllm.engine.async_engine import AsyncLLMEngine, EngineStepError
from pagedllm.engine.outputs import CompletionOutput, RequestOutput
from pagedllm.sampling_params import SamplingParams


@dataclass
class _Stats:
    num_running: int = 0


class ScriptedEngine:
    """Each request emits ``max_tokens`` tokens, one per step; ``fail_next`` makes a step raise."""

    tokenizer = None
    model_name = "scripted"
    max_model_len = 64

    def __init__(self) -> None:
        self.live: dict[str, list[int]] = {}
        self.limits: dict[str, int] = {}
        self.aborted: list[str] = []
        self.fail_next = False

    def add_request(self, request_id, prompt, params, prompt_token_ids=None, arrival_time=None):
        if not prompt:
            raise ValueError("the prompt is empty")
        if request_id in self.live:
            raise ValueError("duplicate request id")
        self.live[request_id] = []
        self.limits[request_id] = params.max_tokens

    def abort_request(self, request_ids) -> None:
        for rid in [request_ids] if isinstance(request_ids, str) else request_ids:
            if self.live.pop(rid, None) is not None:
                self.aborted.append(rid)

    def has_unfinished_requests(self) -> bool:
        return bool(self.live)

    def step(self) -> list[RequestOutput]:
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("boom")
        time.sleep(0.005)  # a model step takes time; aborts land between steps
        outputs = []
        for rid, tokens in list(self.live.items()):
            tokens.append(len(tokens))
            done = len(tokens) >= self.limits[rid]
            comp = CompletionOutput(
                index=0,
                text="x" * len(tokens),
                token_ids=list(tokens),
                finish_reason="length" if done else None,
                delta_text="x",
                delta_token_ids=[tokens[-1]],
            )
            outputs.append(RequestOutput(rid, "p", [1], [comp], finished=done))
            if done:
                del self.live[rid]
        return outputs

    def stats(self) -> _Stats:
        return _Stats(num_running=len(self.live))


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_streams_every_token_then_finishes() -> None:
    async def main():
        engine = AsyncLLMEngine(ScriptedEngine())
        outs = [o async for o in engine.generate("p", SamplingParams(max_tokens=5), "a")]
        engine.shutdown()
        return outs

    outs = _run(main())
    assert [o.outputs[0].delta_token_ids for o in outs] == [[0], [1], [2], [3], [4]]
    assert outs[-1].finished and not any(o.finished for o in outs[:-1])


def test_add_errors_are_raised_before_streaming() -> None:
    async def main():
        engine = AsyncLLMEngine(ScriptedEngine())
        with pytest.raises(ValueError, match="empty"):
            await engine.add_request("a", "", SamplingParams())
        # the id is free again and the engine still serves
        outs = [o async for o in engine.generate("p", SamplingParams(max_tokens=2), "a")]
        engine.shutdown()
        return outs

    assert _run(main())[-1].finished


def test_abandoned_stream_aborts_its_request() -> None:
    async def main():
        inner = ScriptedEngine()
        engine = AsyncLLMEngine(inner)
        gen = engine.generate("p", SamplingParams(max_tokens=50), "a")
        await gen.__anext__()
        await gen.aclose()
        for _ in range(100):
            if not inner.live:
                break
            await asyncio.sleep(0.01)
        engine.shutdown()
        return inner

    inner = _run(main())
    assert inner.aborted == ["a"] and not inner.live


def test_failed_step_fails_in_flight_requests_and_keeps_serving() -> None:
    async def main():
        inner = ScriptedEngine()
        engine = AsyncLLMEngine(inner)
        stream = await engine.add_request("a", "p", SamplingParams(max_tokens=50))
        await stream.__anext__()
        inner.fail_next = True
        with pytest.raises(EngineStepError, match="boom"):
            async for _ in stream:
                pass
        assert inner.aborted == ["a"]
        outs = [o async for o in engine.generate("p", SamplingParams(max_tokens=3), "b")]
        engine.shutdown()
        return outs, engine

    outs, engine = _run(main())
    assert outs[-1].finished and len(outs) == 3
    assert "boom" in engine.last_error
    assert not engine.is_running


def test_drain_lets_short_requests_finish() -> None:
    async def main():
        engine = AsyncLLMEngine(ScriptedEngine())
        stream = await engine.add_request("a", "p", SamplingParams(max_tokens=3))
        collected = asyncio.ensure_future(_collect(stream))
        await engine.drain(timeout=5)
        return await collected, engine

    outs, engine = _run(main())
    assert outs[-1].finished
    assert not engine.is_running


async def _collect(stream):
    return [o async for o in stream]
