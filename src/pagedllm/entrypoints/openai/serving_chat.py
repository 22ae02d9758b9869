"""POST /v1/chat/completions: messages through the model's chat template."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from pagedllm.engine.async_engine import RequestStream
from pagedllm.engine.outputs import Logprobs
from pagedllm.entrypoints.openai.errors import APIError
from pagedllm.entrypoints.openai.protocol import (
    ChatChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessage,
    ChatStreamChoice,
    ChoiceLogprobs,
    DeltaMessage,
    ResponseMessage,
    TokenLogprob,
    TopLogprob,
    UsageInfo,
    random_id,
)
from pagedllm.entrypoints.openai.serving_base import (
    ServerState,
    admit,
    all_final,
    build_params,
    check_text,
    merge_streams,
    sse,
    sse_error,
    submit,
    top_logprobs,
    unless_disconnected,
    usage_counts,
)


def render_chat(
    state: ServerState, messages: list[ChatMessage], add_generation_prompt: bool = True
) -> list[int]:
    """Token ids of the conversation, through the model's chat template (400 if it fails)."""
    plain = [
        {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        for m in messages
    ]
    try:
        ids = state.tokenizer.apply_chat_template(
            plain,
            add_generation_prompt=add_generation_prompt,
            tokenize=True,
            parse_special_tokens_in_content=state.parse_special_tokens_in_chat,
        )
    except (ValueError, TypeError) as exc:
        raise APIError(400, f"cannot apply the chat template: {exc}", param="messages") from exc
    if isinstance(ids, dict):  # a transformers-style BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


def chat_logprobs(
    state: ServerState, token_ids: list[int], logprobs: list[Logprobs] | None, k: int
) -> ChoiceLogprobs:
    content: list[TokenLogprob] = []
    for i, tid in enumerate(token_ids):
        lp = logprobs[i] if logprobs is not None and i < len(logprobs) else {}
        token = state.token_string(tid)
        tops = [
            TopLogprob(
                token=state.token_string(t),
                logprob=v,
                bytes=list(state.token_string(t).encode("utf-8")),
            )
            for t, v in top_logprobs(lp, k)
        ]
        content.append(
            TokenLogprob(
                token=token,
                logprob=lp.get(tid, float("-inf")) if lp else 0.0,
                bytes=list(token.encode("utf-8")),
                top_logprobs=tops,
            )
        )
    return ChoiceLogprobs(content=content)


async def create_chat_completion(
    body: ChatCompletionRequest, state: ServerState, raw: Request
) -> JSONResponse | StreamingResponse:
    model = state.check_model(body.model)
    max_tokens = (
        body.max_tokens if body.max_completion_tokens is None else body.max_completion_tokens
    )
    params = build_params(body, max_tokens)
    check_text(state, "".join(m.text() for m in body.messages), "messages")
    admit(state, 1)  # a cheap 429 before any tokenizing
    request_id = random_id("chatcmpl")

    async def tokenize_and_submit() -> list[RequestStream]:
        prompt_ids = await state.run_blocking(
            render_chat, state, body.messages, body.add_generation_prompt
        )
        return await submit(state, [(None, prompt_ids)], params, request_id)

    streams = await unless_disconnected(raw, tokenize_and_submit())
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        generator = _stream(body, state, streams, request_id, model, include_usage)
        return StreamingResponse(generator, media_type="text/event-stream")
    (out,) = await unless_disconnected(raw, all_final(streams))
    k = body.top_logprobs or 0
    choices = [
        ChatChoice(
            index=comp.index,
            message=ResponseMessage(content=comp.text),
            logprobs=chat_logprobs(state, comp.token_ids, comp.logprobs, k)
            if body.logprobs
            else None,
            finish_reason=comp.finish_reason,
            stop_reason=comp.stop_reason,
        )
        for comp in out.outputs
    ]
    prompt_tokens, completion_tokens = usage_counts([out])
    usage = UsageInfo(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )
    response = ChatCompletionResponse(id=request_id, model=model, choices=choices, usage=usage)
    return JSONResponse(response.model_dump())


async def _stream(
    body: ChatCompletionRequest,
    state: ServerState,
    streams: list[RequestStream],
    request_id: str,
    model: str,
    include_usage: bool,
) -> AsyncIterator[str]:
    """SSE: per choice a role chunk first, then content deltas, a finish chunk, then [DONE]."""

    def chunk(choices: list[ChatStreamChoice], usage: UsageInfo | None = None) -> str:
        return sse(ChatCompletionChunk(id=request_id, model=model, choices=choices, usage=usage))

    for i in range(body.n):
        yield chunk([ChatStreamChoice(index=i, delta=DeltaMessage(role="assistant", content=""))])
    prompt_tokens = completion_tokens = 0
    k = body.top_logprobs or 0
    try:
        async for _, out in merge_streams(streams):
            prompt_tokens = len(out.prompt_token_ids)
            for comp in out.outputs:
                completion_tokens += len(comp.delta_token_ids)
                if not comp.delta_text and not comp.delta_token_ids and not comp.finished:
                    continue
                logprobs = None
                if body.logprobs:
                    logprobs = chat_logprobs(state, comp.delta_token_ids, comp.delta_logprobs, k)
                delta = DeltaMessage(content=comp.delta_text)
                choice = ChatStreamChoice(
                    index=comp.index,
                    delta=delta,
                    logprobs=logprobs,
                    finish_reason=comp.finish_reason,
                )
                yield chunk([choice])
        if include_usage:
            usage = UsageInfo(
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                total_tokens=prompt_tokens + completion_tokens,
            )
            yield chunk([], usage)
    except Exception as exc:  # noqa: BLE001 - reported in-stream: the headers are already sent
        yield sse_error(exc)
    yield "data: [DONE]\n\n"
