"""What the completion and chat handlers share: model check, request submission, SSE, logprobs.

Handlers never touch the engine directly: they go through ``AsyncLLMEngine``, which raises the
engine's ValueError/TypeError before anything streams, so bad input is a clean 400. Tokenizing
and chat-template rendering run in a small thread pool (``ServerState.run_blocking``), never on
the event loop, and only after a size check on the text itself: a huge prompt is a quick 400
instead of seconds of tokenization that would stall every other request and ``/health``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel

from pagedllm.engine.async_engine import (
    AsyncLLMEngine,
    EngineDeadError,
    EngineOverloadedError,
    EngineStepError,
    RequestStream,
    RequestTimeoutError,
)
from pagedllm.engine.beam_search import BeamSearchParams
from pagedllm.engine.outputs import RequestOutput
from pagedllm.engine.validation import check_text_size
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
    # chat content containing special-token text is encoded as plain text unless this is set
    parse_special_tokens_in_chat: bool = False
    _token_strings: dict[int, str] = field(default_factory=dict)
    _pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(2, thread_name_prefix="pagedllm-tokenize")
    )

    async def run_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run CPU-bound work (tokenization, templates) off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def encode_prompt(self, text: str, param: str = "prompt") -> list[int]:
        """Token ids of a completion prompt: size-checked first, then tokenized in the pool."""
        check_text(self, text, param)
        return await self.run_blocking(_encode, self.tokenizer, text)

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
        if not _is_utf8(model):
            raise APIError(400, "model is not valid UTF-8 text", param="model")
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


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate ("\ud800" in the JSON)
        return False
    return True


def _encode(tokenizer: Any, text: str) -> list[int]:
    if not _is_utf8(text):
        raise ValueError("the prompt is not valid UTF-8 text (a lone surrogate?)")
    return list(tokenizer.encode(text, add_special_tokens=True))


def check_text(state: ServerState, text: str, param: str) -> None:
    """400 when ``text`` holds certainly more tokens than the context (no tokenizing)."""
    try:
        check_text_size(text, state.tokenizer, state.engine.max_model_len)
    except ValueError as exc:
        raise APIError(400, str(exc), param=param) from exc


def build_params(request: Any, max_tokens: int | None) -> SamplingParams | BeamSearchParams:
    """``request.to_sampling_params`` with its ValueError/TypeError turned into a 400; with
    ``use_beam_search`` the beam search of width ``n`` (``best_of``) instead."""
    try:
        if request.use_beam_search:
            return beam_params(request, max_tokens)
        return request.to_sampling_params(max_tokens)
    except (ValueError, TypeError) as exc:
        raise APIError(400, str(exc)) from exc


def admit(state: ServerState, count: int) -> None:
    """429 (with Retry-After) when the waiting queue is full; 503 while shutting down."""
    try:
        state.engine.check_admission(count)
    except EngineOverloadedError as exc:
        headers = {"Retry-After": str(exc.retry_after)}
        raise APIError(429, str(exc), code="rate_limit_exceeded", headers=headers) from exc
    except EngineDeadError as exc:
        raise APIError(503, str(exc)) from exc


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
    """Queue one engine request per prompt, all at once (they land between the same two
    steps); on any rejection abort the ones queued (400)."""
    admit(state, len(prompts))
    rids = [request_id if len(prompts) == 1 else f"{request_id}-{i}" for i in range(len(prompts))]
    adds = [
        asyncio.ensure_future(state.engine.add_request(rid, text, params, ids))
        for rid, (text, ids) in zip(rids, prompts, strict=True)
    ]
    try:
        await asyncio.wait(adds)
    except BaseException:
        for add in adds:
            add.cancel()
        close_all(
            [a.result() for a in adds if a.done() and not a.cancelled() and not a.exception()]
        )
        raise
    streams = [a.result() for a in adds if a.exception() is None]
    errors = [a.exception() for a in adds if a.exception() is not None]
    if errors:
        close_all(streams)
        exc = errors[0]
        if isinstance(exc, (ValueError, TypeError)):
            # ContextLengthError carries code "context_length_exceeded" (OpenAI's)
            code = getattr(exc, "code", None)
            raise APIError(400, str(exc), param="prompt", code=code) from exc
        if isinstance(exc, EngineDeadError):
            raise APIError(503, str(exc)) from exc
        raise exc
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
    except RequestTimeoutError as exc:
        raise APIError(504, str(exc), code="request_timeout") from exc
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
    if isinstance(exc, EngineDeadError):
        status = 503
    elif isinstance(exc, RequestTimeoutError):
        status = 504
    else:
        status = 500
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
