"""What the completion and chat handlers share: model check, request submission, SSE, logprobs.

Handlers never touch the engine directly: they go through ``AsyncLLMEngine``, which raises the
engine's ValueError/TypeError before anything streams, so bad input is a clean 400.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel

from pagedllm.engine.async_engine import (
    AsyncLLMEngine,
    EngineDeadError,
    EngineStepError,
    RequestStream,
)
from pagedllm.engine.beam_search import BeamSearchParams
from pagedllm.engine.outputs import RequestOutput
from pagedllm.entrypoints.openai.errors import APIError, error_body
from pagedllm.metrics import ServerMetrics
from pagedllm.sampling_params import SamplingParams

T = TypeVar("T")


@dataclass(slots=True)
class ServerState:
    """Everything a handler needs; one per app."""

    engine: AsyncLLMEngine
    served_model_names: list[str]
    metrics: ServerMetrics
    tool_call_parser: str | None = None  # --tool-call-parser: enables tool_choice "auto"
    _token_strings: dict[int, str] = field(default_factory=dict)

    @property
    def model_name(self) -> str:
        return self.served_model_names[0]

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    def check_model(self, model: str | None) -> str:
        """The served name to report; 404 for a model this server does not serve."""
        if model is None or model in self.served_model_names:
            return model or self.model_name
        raise APIError(
            404,
            f"The model `{model}` does not exist. Available: {self.served_model_names}",
            param="model",
            code="model_not_found",
        )

    def token_string(self, token_id: int) -> str:
        """A token's text on its own (cached: logprobs ask for the same ids often)."""
        text = self._token_strings.get(token_id)
        if text is None:
            text = self.tokenizer.decode([token_id], skip_special_tokens=False)
            if len(self._token_strings) < 200_000:
                self._token_strings[token_id] = text
        return text


def build_params(request: Any, max_tokens: int | None) -> SamplingParams | BeamSearchParams:
    """``request.to_sampling_params`` with its ValueError/TypeError turned into a 400; with
    ``use_beam_search`` the beam search of width ``n`` (``best_of``) instead."""
    try:
        if request.use_beam_search:
            return beam_params(request, max_tokens)
        return request.to_sampling_params(max_tokens)
    except (ValueError, TypeError) as exc:
        raise APIError(400, str(exc)) from exc


def beam_params(request: Any, max_tokens: int | None) -> BeamSearchParams:
    """vLLM's ``use_beam_search``: deterministic, so sampling-only fields are errors (400)."""
    width = getattr(request, "best_of", None) or request.n
    checks = [
        ("n", request.n != width, f"n ({request.n}) must equal the beam width best_of ({width})"),
        ("temperature", (request.temperature or 0.0) > 0.0, "must be 0 or unset"),
        ("top_p", request.top_p is not None and request.top_p < 1.0, "must be 1 or unset"),
        ("seed", request.seed is not None, "is a sampling option"),
        ("stream", request.stream, "is not available (one answer when the search ends)"),
    ]
    for field_name, bad, why in checks:
        if bad:
            raise APIError(400, f"{field_name} {why} with use_beam_search", param=field_name)
    return BeamSearchParams(width, 16 if max_tokens is None else max_tokens,
                            ignore_eos=request.ignore_eos)  # fmt: skip


async def submit(
    state: ServerState,
    prompts: Sequence[tuple[str | None, list[int] | None]],
    params: SamplingParams,
    request_id: str,
) -> list[RequestStream]:
    """Queue one engine request per prompt; on any rejection abort the ones queued (400)."""
    streams: list[RequestStream] = []
    try:
        for i, (text, ids) in enumerate(prompts):
            rid = request_id if len(prompts) == 1 else f"{request_id}-{i}"
            streams.append(await state.engine.add_request(rid, text, params, ids))
    except (ValueError, TypeError) as exc:
        close_all(streams)
        # ContextLengthError carries code "context_length_exceeded" (OpenAI's)
        raise APIError(400, str(exc), param="prompt", code=getattr(exc, "code", None)) from exc
    except EngineDeadError as exc:
        close_all(streams)
        raise APIError(503, str(exc)) from exc
    except BaseException:
        close_all(streams)
        raise
    return streams


def close_all(streams: Sequence[RequestStream]) -> None:
    for stream in streams:
        stream.close()


async def final_output(stream: RequestStream) -> RequestOutput:
    """Run a request to its end; the last output holds the whole text."""
    last: RequestOutput | None = None
    try:
        async for out in stream:
            last = out
    finally:
        stream.close()
    if last is None:
        raise APIError(500, "the engine ended the request without an output")
    return last


async def all_final(streams: Sequence[RequestStream]) -> list[RequestOutput]:
    try:
        return list(await asyncio.gather(*(final_output(s) for s in streams)))
    except EngineStepError as exc:
        raise APIError(500, str(exc)) from exc
    except EngineDeadError as exc:
        raise APIError(503, str(exc)) from exc
    finally:
        close_all(streams)


async def merge_streams(
    streams: Sequence[RequestStream],
) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Interleave several requests' outputs as they come, tagged with the prompt index."""
    if len(streams) == 1:
        async for out in streams[0]:
            yield 0, out
        return
    queue: asyncio.Queue[tuple[int, RequestOutput | BaseException | None]] = asyncio.Queue()

    async def pump(i: int, stream: RequestStream) -> None:
        try:
            async for out in stream:
                queue.put_nowait((i, out))
            queue.put_nowait((i, None))
        except Exception as exc:  # noqa: BLE001 - re-raised on the consumer side
            queue.put_nowait((i, exc))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(streams)
        while remaining:
            i, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for task in tasks:
            task.cancel()
        close_all(streams)


def sse(payload: BaseModel | dict) -> str:
    """One server-sent event."""
    if isinstance(payload, BaseModel):
        return f"data: {payload.model_dump_json()}\n\n"
    return f"data: {json.dumps(payload)}\n\n"


def sse_error(exc: BaseException) -> str:
    status = 503 if isinstance(exc, EngineDeadError) else 500
    return sse(error_body(status, str(exc)))


async def wait_for_disconnect(request: Request) -> None:
    """Returns when the client goes away (the body has been read by then)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; cancel it (which aborts its requests) if the client disconnects first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(wait_for_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task not in done:
        task.cancel()
        try:
            await task
        except BaseException:  # noqa: BLE001 - the client is gone; nothing to report to
            pass
        raise APIError(499, "client disconnected")
    return task.result()


def top_logprobs(lp: dict[int, float], k: int) -> list[tuple[int, float]]:
    """The ``k`` most likely (token id, logprob) pairs of one position, best first."""
    return sorted(lp.items(), key=lambda kv: kv[1], reverse=True)[:k]


def usage_counts(outputs: Sequence[RequestOutput]) -> tuple[int, int]:
    prompt = sum(len(o.prompt_token_ids) for o in outputs)
    completion = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    return prompt, completion
