"""POST /v1/completions: legacy text completions (string, strings, or token-id prompts)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic_core import to_json

from pagedllm.engine.async_engine import RequestStream
from pagedllm.engine.outputs import Logprobs, RequestOutput
from pagedllm.entrypoints.openai.errors import APIError
from pagedllm.entrypoints.openai.protocol import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    random_id,
)
from pagedllm.entrypoints.openai.serving_base import (
    ServerState,
    admit,
    all_final,
    build_params,
    merge_streams,
    sse,
    sse_error,
    submit,
    top_logprobs,
    unless_disconnected,
    usage_counts,
)
from pagedllm.entrypoints.openai.serving_chat import refuse_unsupported, usage_info


class TextChunk:
    """A streamed completion chunk without logprobs, written as text directly: the same bytes
    as ``sse(CompletionResponse(...))`` (pydantic's own string encoder, the same key order) at a
    fraction of the cost, because it runs once per stream per engine step."""

    def __init__(self, request_id: str, created: int, model: str) -> None:
        head = {"id": request_id, "object": "text_completion", "created": created, "model": model}
        self._head = "data: " + to_json(head).decode()[:-1] + ',"choices":[{"index":'

    def event(self, index: int, text: str, finish: str | None, stop: int | str | None) -> str:
        return (
            f'{self._head}{index},"text":{to_json(text).decode()},"logprobs":null,'
            f'"finish_reason":{to_json(finish).decode()},"stop_reason":{to_json(stop).decode()}'
            '}],"usage":null}\n\n'
        )


def normalize_prompts(prompt: object) -> list[tuple[str | None, list[int] | None]]:
    """(text, token ids) per prompt: a string, strings, token ids, or lists of token ids."""
    if isinstance(prompt, str):
        return [(prompt, None)]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return [(p, None) for p in prompt]
        if all(isinstance(p, int) for p in prompt):
            return [(None, list(prompt))]
        if all(isinstance(p, list) for p in prompt):
            return [(None, list(p)) for p in prompt]
    raise APIError(
        400,
        "prompt must be a non-empty string, list of strings, list of token ids, or list of "
        "token-id lists",
        param="prompt",
    )


class CompletionLogprobBuilder:
    """Builds the legacy logprobs object (tokens, token_logprobs, top_logprobs, text_offset)."""

    def __init__(self, state: ServerState, k: int, offset: int = 0) -> None:
        self.state = state
        self.k = k
        self.offset = offset

    def build(
        self, token_ids: list[int], logprobs: list[Logprobs | None] | None
    ) -> CompletionLogprobs:
        out = CompletionLogprobs()
        for i, tid in enumerate(token_ids):
            lp = logprobs[i] if logprobs is not None and i < len(logprobs) else None
            token = self.state.token_string(tid)
            out.tokens.append(token)
            out.text_offset.append(self.offset)
            self.offset += len(token)
            if lp is None:
                out.token_logprobs.append(None)
                out.top_logprobs.append(None)
                continue
            out.token_logprobs.append(lp.get(tid))
            out.top_logprobs.append(
                {self.state.token_string(t): v for t, v in top_logprobs(lp, max(self.k, 1))}
            )
        return out


async def create_completion(
    body: CompletionRequest, state: ServerState, raw: Request
) -> JSONResponse | StreamingResponse:
    model = state.check_model(body.model)
    refuse_unsupported(body)
    if body.suffix:
        raise APIError(400, "suffix is not supported", param="suffix")
    if body.best_of is not None and body.best_of != body.n:
        raise APIError(400, "best_of other than n is not supported", param="best_of")
    prompts = normalize_prompts(body.prompt)
    params = build_params(body, body.max_tokens)
    admit(state, len(prompts))  # bad input is a 400 first; then a cheap 429 before tokenizing
    request_id = random_id("cmpl")

    async def tokenize_and_submit() -> list[RequestStream]:
        ids = await asyncio.gather(
            *(state.encode_prompt(t) if i is None else _same(i) for t, i in prompts)
        )
        tokenized = [(t, i) for (t, _), i in zip(prompts, ids, strict=True)]
        return await submit(state, tokenized, params, request_id)

    # a client that leaves while its prompts are tokenized or queued aborts them
    streams = await unless_disconnected(raw, tokenize_and_submit())
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        generator = _stream(body, state, streams, request_id, model, include_usage)
        return StreamingResponse(generator, media_type="text/event-stream")
    outputs = await unless_disconnected(raw, all_final(streams))
    return JSONResponse(_response(body, state, outputs, request_id, model).model_dump())


async def _same(ids: list[int]) -> list[int]:
    return ids


def _prompt_text(state: ServerState, out: RequestOutput) -> str:
    if out.prompt is not None:
        return out.prompt
    return state.tokenizer.decode(out.prompt_token_ids)


def _response(
    body: CompletionRequest,
    state: ServerState,
    outputs: list[RequestOutput],
    request_id: str,
    model: str,
) -> CompletionResponse:
    choices: list[CompletionChoice] = []
    for p, out in enumerate(outputs):
        prefix = _prompt_text(state, out) if body.echo else ""
        for comp in out.outputs:
            logprobs = None
            if body.logprobs is not None:
                builder = CompletionLogprobBuilder(state, body.logprobs)
                logprobs = builder.build([], None)
                if body.echo:
                    _extend(logprobs, builder.build(out.prompt_token_ids, out.prompt_logprobs))
                _extend(logprobs, builder.build(comp.token_ids, comp.logprobs))
            choices.append(
                CompletionChoice(
                    index=p * body.n + comp.index,
                    text=prefix + comp.text,
                    logprobs=logprobs,
                    finish_reason=comp.finish_reason,
                    stop_reason=comp.stop_reason,
                )
            )
    prompt_tokens, completion_tokens = usage_counts(outputs)
    usage = usage_info(prompt_tokens, completion_tokens, outputs)
    return CompletionResponse(id=request_id, model=model, choices=choices, usage=usage)


def _extend(into: CompletionLogprobs, more: CompletionLogprobs) -> None:
    into.tokens += more.tokens
    into.token_logprobs += more.token_logprobs
    into.top_logprobs += more.top_logprobs
    into.text_offset += more.text_offset


async def _stream(
    body: CompletionRequest,
    state: ServerState,
    streams: list[RequestStream],
    request_id: str,
    model: str,
    include_usage: bool,
) -> AsyncIterator[str]:
    """SSE chunks: one per completion that changed, then usage (if asked), then [DONE]."""
    created = int(time.time())  # one creation time for every chunk of the response
    chunk = TextChunk(request_id, created, model)
    builders: dict[int, CompletionLogprobBuilder] = {}
    prompt_tokens = completion_tokens = 0
    echoed: set[int] = set()
    latest: dict[int, RequestOutput] = {}
    try:
        async for p, out in merge_streams(streams):
            latest[p] = out
            if p not in echoed:
                echoed.add(p)
                prompt_tokens += len(out.prompt_token_ids)
            for comp in out.outputs:
                index = p * body.n + comp.index
                completion_tokens += len(comp.delta_token_ids)
                text = comp.delta_text
                if body.echo and index not in builders:
                    text = _prompt_text(state, out) + text
                builder = builders.setdefault(
                    index, CompletionLogprobBuilder(state, body.logprobs or 0)
                )
                if not text and not comp.delta_token_ids and comp.finish_reason is None:
                    continue
                if body.logprobs is None:  # the per-token hot path: no model objects
                    yield chunk.event(index, text, comp.finish_reason, comp.stop_reason)
                    continue
                choice = CompletionChoice(
                    index=index,
                    text=text,
                    logprobs=builder.build(comp.delta_token_ids, comp.delta_logprobs),
                    finish_reason=comp.finish_reason,
                    stop_reason=comp.stop_reason,
                )
                yield sse(CompletionResponse(id=request_id, created=created, model=model,
                                             choices=[choice]))  # fmt: skip
        if include_usage:
            usage = usage_info(prompt_tokens, completion_tokens, list(latest.values()))
            yield sse(CompletionResponse(id=request_id, created=created, model=model, choices=[],
                                         usage=usage))  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - reported in-stream: the headers are already sent
        yield sse_error(exc)
    yield "data: [DONE]\n\n"
