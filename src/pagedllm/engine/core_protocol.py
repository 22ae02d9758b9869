"""The wire between a front end and the engine-core process (``engine/core_proc.py``).

Transport: ZeroMQ over ``ipc://`` sockets in a private temporary directory. Front ends PUSH
commands to the core's one PULL socket; the core PUSHes a ``CoreBatch`` per engine step to each
front end's own PULL socket. ZeroMQ gives message framing, queueing while the peer is busy and
many writers into one reader without a lock; ``ipc`` avoids the TCP stack.

Serialization: the hot direction (core -> front end, every step, every running request) is
msgspec's msgpack with ``array_like`` structs: encoding a batch of a few hundred token-id deltas
costs tens of microseconds and decodes straight into typed objects (no dict-of-dicts walk).
The cold direction (one ``add`` per request) is pickle: ``SamplingParams`` /
``BeamSearchParams`` / structured-output parameters are nested dataclasses that pickle exactly,
and one pickle per request is noise next to the prompt's forward pass.

What crosses: the core sends token-id *deltas* (never the whole output so far), text only for
requests whose stop strings it must see (or beam search's final texts), logprob deltas, finish
reasons and stats. The front end keeps the prompt, the accumulated ids and the text
(``engine/output_processor.py``).
"""

from __future__ import annotations

import pickle
from typing import Any

import msgspec

from pagedllm.engine.stats import EngineStats

# command kinds, front end -> core (frame 0; frame 1 is the payload)
ADD = b"add"  # pickle: (client, request_id, prompt, params, prompt_token_ids, arrival, detokenize)
ABORT = b"abort"  # msgpack: list of request ids
SNAPSHOT = b"snap"  # msgpack: client index; the next batch to it carries a KV page snapshot
SHUTDOWN = b"stop"  # empty: finish the current step and exit


class WireCompletion(msgspec.Struct, array_like=True, gc=False):
    """One sample's change in one step."""

    index: int
    delta_token_ids: list[int]
    delta_text: str
    delta_logprobs: list[dict[int, float]] | None
    cumulative_logprob: float | None
    finish_reason: str | None
    stop_reason: int | str | None
    score: float | None


class WireOutput(msgspec.Struct, array_like=True, gc=False):
    """One request's change in one step (``RequestOutput`` without what the front end keeps)."""

    request_id: str
    completions: list[WireCompletion]
    finished: bool
    error: str | None
    prompt_logprobs: list[dict[int, float] | None] | None
    # arrival, first scheduled, first token, finished (monotonic: one clock on one host),
    # cached prompt tokens, preemptions
    metrics: tuple[float, float | None, float | None, float | None, int, int] | None


class AddReply(msgspec.Struct, array_like=True, gc=False):
    """The core's answer to an ``add``: accepted (``error_type`` None) or why not."""

    request_id: str
    error_type: str | None = None  # "ValueError" | "TypeError" | another exception's name
    message: str = ""
    code: str | None = None  # e.g. "context_length_exceeded"


class CoreBatch(msgspec.Struct, array_like=True, gc=False):
    """Everything the core tells one front end after a step (or on its idle timer)."""

    outputs: list[WireOutput]
    replies: list[AddReply]
    stats: EngineStats | None = None
    snapshot: dict[str, Any] | None = None
    step_error: str | None = None  # a whole step failed: every listed request is failed
    failed_ids: list[str] = []
    sent_at: float = 0.0  # time.monotonic() in the core when the batch was sent


ENCODER = msgspec.msgpack.Encoder()


def batch_decoder() -> msgspec.msgpack.Decoder:
    return msgspec.msgpack.Decoder(CoreBatch)


def encode_add(
    client: int,
    request_id: str,
    prompt: Any,
    params: Any,
    prompt_token_ids: list[int] | None,
    arrival: float,
    detokenize: bool,
) -> bytes:
    payload = (client, request_id, prompt, params, prompt_token_ids, arrival, detokenize)
    return pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)


def decode_add(payload: bytes) -> tuple:
    return pickle.loads(payload)  # noqa: S301 - our own private ipc socket in a 0700 directory


def error_reply(request_id: str, exc: BaseException) -> AddReply:
    """An add the engine rejected, keeping what the server maps to HTTP (type, code)."""
    if isinstance(exc, ValueError):
        kind = "ValueError"
    elif isinstance(exc, TypeError):
        kind = "TypeError"
    else:
        kind = type(exc).__name__
    return AddReply(request_id, kind, str(exc), getattr(exc, "code", None))


def reply_error(reply: AddReply) -> BaseException:
    """Rebuild the exception of a rejected add on the front end."""
    cls = {"ValueError": ValueError, "TypeError": TypeError}.get(reply.error_type or "")
    exc: BaseException = (cls or RuntimeError)(
        reply.message if cls else f"{reply.error_type}: {reply.message}"
    )
    if reply.code is not None:
        exc.code = reply.code  # type: ignore[attr-defined] - read by the server's 400 mapping
    return exc
