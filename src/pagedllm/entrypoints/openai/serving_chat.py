"""POST /v1/chat/completions: messages through the model's chat template.

Tools (``chat_tools.py``) go into the prompt through the template; answers that may hold tool
calls go through a tool parser (``tool_parsers.py``), streamed as OpenAI streams them: a delta
with the call's index, id, type and name, then its arguments.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from pagedllm.engine.async_engine import RequestStream
from pagedllm.engine.outputs import Logprobs
from pagedllm.entrypoints.openai.chat_tools import ToolPlan, plan_tools
from pagedllm.entrypoints.openai.errors import APIError
from pagedllm.entrypoints.openai.protocol import (
    ChatChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessage,
    ChatStreamChoice,
    ChoiceLogprobs,
    DeltaFunctionCall,
    DeltaMessage,
    DeltaToolCall,
    FunctionCall,
    PromptTokensDetails,
    ResponseMessage,
    TokenLogprob,
    ToolCall,
    TopLogprob,
    UsageInfo,
    random_id,
)
from pagedllm.entrypoints.openai.serving_base import (
    ServerState,
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
from pagedllm.entrypoints.openai.tool_parsers import HermesToolParser, ParsedCall


def _message_dict(message: ChatMessage) -> dict[str, Any]:
    """A message as chat templates expect it (tool call arguments as objects, as in HF)."""
    out: dict[str, Any] = {
        "role": "system" if message.role == "developer" else message.role,
        "content": message.text(),
    }
    if message.tool_calls:
        calls = []
        for call in message.tool_calls:
            try:
                arguments = json.loads(call.function.arguments or "{}")
            except json.JSONDecodeError as exc:
                raise APIError(
                    400, f"tool call arguments are not JSON: {exc}", param="messages"
                ) from exc
            function = {"name": call.function.name, "arguments": arguments}
            calls.append({"id": call.id, "type": "function", "function": function})
        out["tool_calls"] = calls
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        out["name"] = message.name
    return out


def render_chat(
    state: ServerState,
    messages: list[ChatMessage],
    add_generation_prompt: bool = True,
    tools: list[dict[str, Any]] | None = None,
) -> list[int]:
    """Token ids of the conversation, through the model's chat template (400 if it fails)."""
    plain = [_message_dict(m) for m in messages]
    try:
        ids = state.tokenizer.apply_chat_template(
            plain, add_generation_prompt=add_generation_prompt, tokenize=True, tools=tools
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
    refuse_unsupported(body)
    max_tokens = body.max_completion_tokens or body.max_tokens
    plan = plan_tools(body, state.tool_call_parser)
    params = build_params(body, max_tokens)
    if plan.constraint is not None:
        params = params.clone(structured_output=plan.constraint)
    prompt_ids = render_chat(state, body.messages, body.add_generation_prompt, plan.tools)
    request_id = random_id("chatcmpl")
    streams = await submit(state, [(None, prompt_ids)], params, request_id)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        generator = _stream(body, state, streams, request_id, model, include_usage, plan)
        return StreamingResponse(generator, media_type="text/event-stream")
    (out,) = await unless_disconnected(raw, all_final(streams))
    k = body.top_logprobs or 0
    choices = []
    for comp in out.outputs:
        message, finish = _message(comp.text, comp.finish_reason, plan)
        choices.append(
            ChatChoice(
                index=comp.index,
                message=message,
                logprobs=chat_logprobs(state, comp.token_ids, comp.logprobs, k)
                if body.logprobs
                else None,
                finish_reason=finish,
                stop_reason=comp.stop_reason,
            )
        )
    prompt_tokens, completion_tokens = usage_counts([out])
    usage = usage_info(prompt_tokens, completion_tokens, [out])
    response = ChatCompletionResponse(id=request_id, model=model, choices=choices, usage=usage)
    return JSONResponse(response.model_dump())


def refuse_unsupported(body: Any) -> None:
    """400 naming the first request field this server does not implement."""
    unknown = body.unsupported_fields()
    if unknown:
        raise APIError(
            400, f"unsupported request field(s) {unknown}: not implemented by this server",
            param=unknown[0],
        )  # fmt: skip


def usage_info(prompt_tokens: int, completion_tokens: int, outputs: list[Any]) -> UsageInfo:
    """Usage with ``prompt_tokens_details.cached_tokens`` from the prefix-cache hits."""
    cached = sum(o.metrics.num_cached_tokens for o in outputs if o.metrics is not None)
    return UsageInfo(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
    )


def _tool_call(call: ParsedCall) -> ToolCall:
    return ToolCall(id=call.id, function=FunctionCall(name=call.name, arguments=call.arguments))


def _message(text: str, finish: str | None, plan: ToolPlan) -> tuple[ResponseMessage, str | None]:
    """The assistant message of a whole answer (tool calls parsed out when tools are on)."""
    if plan.parser is None:
        return ResponseMessage(content=text), finish
    content, calls = plan.parser().parse(text)
    if calls and finish == "stop":
        finish = "tool_calls"
    message = ResponseMessage(
        content=content if content.strip() or not calls else None,
        tool_calls=[_tool_call(c) for c in calls],
    )
    return message, finish


def _delta(
    parser: HermesToolParser | None, text: str, finished: bool
) -> tuple[str, list[DeltaToolCall]]:
    """Content and tool-call deltas of one streamed text delta."""
    if parser is None:
        return text, []
    content, calls = parser.feed(text)
    if finished:
        tail, more = parser.finish()
        content, calls = content + tail, calls + more
    deltas = []
    for call in calls:  # name first, then the arguments, as OpenAI streams them
        head = DeltaFunctionCall(name=call.name, arguments="")
        deltas.append(DeltaToolCall(index=call.index, id=call.id, type="function", function=head))
        deltas.append(
            DeltaToolCall(index=call.index, function=DeltaFunctionCall(arguments=call.arguments))
        )
    return content, deltas


async def _stream(
    body: ChatCompletionRequest,
    state: ServerState,
    streams: list[RequestStream],
    request_id: str,
    model: str,
    include_usage: bool,
    plan: ToolPlan,
) -> AsyncIterator[str]:
    """SSE: per choice a role chunk first, then content deltas, a finish chunk, then [DONE]."""

    def chunk(choices: list[ChatStreamChoice], usage: UsageInfo | None = None) -> str:
        return sse(ChatCompletionChunk(id=request_id, model=model, choices=choices, usage=usage))

    for i in range(body.n):
        yield chunk([ChatStreamChoice(index=i, delta=DeltaMessage(role="assistant", content=""))])
    prompt_tokens = completion_tokens = 0
    k = body.top_logprobs or 0
    parsers = [plan.parser() if plan.parser else None for _ in range(body.n)]
    called = [False] * body.n
    last = None
    try:
        async for _, out in merge_streams(streams):
            last = out
            prompt_tokens = len(out.prompt_token_ids)
            for comp in out.outputs:
                completion_tokens += len(comp.delta_token_ids)
                if not comp.delta_text and not comp.delta_token_ids and not comp.finished:
                    continue
                logprobs = None
                if body.logprobs:
                    logprobs = chat_logprobs(state, comp.delta_token_ids, comp.delta_logprobs, k)
                text, calls = _delta(parsers[comp.index], comp.delta_text, comp.finished)
                called[comp.index] |= bool(calls)
                finish = comp.finish_reason
                if finish == "stop" and called[comp.index]:
                    finish = "tool_calls"
                delta = DeltaMessage(content=text, tool_calls=calls or None)
                choice = ChatStreamChoice(
                    index=comp.index, delta=delta, logprobs=logprobs, finish_reason=finish
                )
                yield chunk([choice])
        if include_usage:
            usage = usage_info(prompt_tokens, completion_tokens, [last] if last else [])
            yield chunk([], usage)
    except Exception as exc:  # noqa: BLE001 - reported in-stream: the headers are already sent
        yield sse_error(exc)
    yield "data: [DONE]\n\n"
