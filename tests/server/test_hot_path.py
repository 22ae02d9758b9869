"""The front end's per-token path: a stream that is behind gets its queued outputs as one, and
the directly written completion chunk is byte for byte the pydantic one."""

from __future__ import annotations

import asyncio

import pytest

from pagedllm.engine.errors import EngineStepError
from pagedllm.engine.outputs import CompletionOutput, RequestOutput
from pagedllm.engine.request_stream import RequestStream


class _Engine:
    request_timeout = None

    def __init__(self) -> None:
        self._streams: dict = {}
        self.aborted: list[str] = []

    def _abort_now(self, rid: str) -> None:
        self.aborted.append(rid)


def _out(step: int, ids: list[int], finish: str | None = None, error: str | None = None,
         logprobs: bool = False) -> RequestOutput:  # fmt: skip
    text = "".join(f"<{i}>" for i in range(step + 1))
    comp = CompletionOutput(
        index=0, text=text, token_ids=list(range(step + 1)), finish_reason=finish,
        delta_text=f"<{step}>", delta_token_ids=ids,
        delta_logprobs=[{i: -0.5} for i in ids] if logprobs else None,
    )  # fmt: skip
    return RequestOutput("r", None, [1, 2], [comp], finish is not None, error=error)


def _drain(stream: RequestStream) -> list:
    async def run() -> list:
        got = []
        try:
            async for out in stream:
                got.append(out)
        except EngineStepError as exc:
            got.append(exc)
        return got

    return asyncio.run(run())


def test_queued_outputs_reach_a_late_reader_as_one() -> None:
    stream = RequestStream(_Engine(), "r")
    for step in range(3):
        stream._put(_out(step, [10 + step], logprobs=True))
    stream._put(_out(3, [13], finish="length", logprobs=True))
    (out,) = _drain(stream)
    comp = out.outputs[0]
    assert out.finished and comp.finish_reason == "length"
    assert comp.delta_text == "<0><1><2><3>" and comp.text == "<0><1><2><3>"
    assert comp.delta_token_ids == [10, 11, 12, 13]
    assert comp.delta_logprobs == [{10: -0.5}, {11: -0.5}, {12: -0.5}, {13: -0.5}]


def test_an_error_is_not_folded_into_the_tokens_before_it() -> None:
    stream = RequestStream(_Engine(), "r")
    stream._put(_out(0, [10]))
    stream._put(_out(1, [11]))
    stream._put(_out(2, [], finish="error", error="boom"))
    first, error = _drain(stream)
    assert first.outputs[0].delta_token_ids == [10, 11]  # the client gets these first
    assert isinstance(error, EngineStepError) and "boom" in str(error)


def test_direct_completion_chunk_is_the_pydantic_chunk() -> None:
    pytest.importorskip("fastapi")
    from pagedllm.entrypoints.openai.protocol import CompletionChoice, CompletionResponse
    from pagedllm.entrypoints.openai.serving_base import sse
    from pagedllm.entrypoints.openai.serving_completion import TextChunk

    cases = [('a"\n\u00e9\U0001f600\x01\u2028\\', None, None), ("", "length", None),
             ("x", "stop", 7), ("y", "stop", '</s>"')]  # fmt: skip
    for text, finish, stop in cases:
        choice = CompletionChoice(index=3, text=text, finish_reason=finish, stop_reason=stop)
        model = CompletionResponse(id="cmpl-1", created=5, model='m"x', choices=[choice])
        assert TextChunk("cmpl-1", 5, 'm"x').event(3, text, finish, stop) == sse(model)
