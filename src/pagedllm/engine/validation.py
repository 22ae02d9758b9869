"""Check and normalise a user's prompt before anything is queued."""

from __future__ import annotations

from typing import Any


def resolve_prompt(
    prompt: str | list[int] | None,
    prompt_token_ids: list[int] | None,
    tokenizer: Any,
    vocab_size: int,
) -> tuple[str | None, list[int]]:
    """Return (prompt text or None, prompt token ids), raising on bad input.

    A string is tokenized (with the model's BOS where it uses one); a list of ints is taken as
    token ids. Ids must lie in [0, vocab_size).
    """
    if prompt_token_ids is not None:
        ids = _check_ids(prompt_token_ids, vocab_size)
        text = prompt if isinstance(prompt, str) else None
    elif isinstance(prompt, str):
        if tokenizer is None:
            raise ValueError("this model has no tokenizer: pass prompt_token_ids instead of text")
        ids = tokenizer.encode(prompt, add_special_tokens=True)
        text = prompt
    elif isinstance(prompt, (list, tuple)):
        ids = _check_ids(list(prompt), vocab_size)
        text = None
    elif prompt is None:
        raise ValueError("a prompt is required: pass text or a list of token ids")
    else:
        raise TypeError(
            f"prompt must be a string or a list of token ids, got {type(prompt).__name__}"
        )
    if not ids:
        raise ValueError("the prompt is empty: give at least one token")
    return text, ids


def _check_ids(ids: list[Any], vocab_size: int) -> list[int]:
    for token in ids:
        if isinstance(token, bool) or not isinstance(token, int):
            raise TypeError(f"prompt token ids must be integers, got {token!r}")
        if not 0 <= token < vocab_size:
            raise ValueError(f"prompt token id {token} is outside the vocabulary [0, {vocab_size})")
    return list(ids)


class ContextLengthError(ValueError):
    """The prompt, or the prompt plus ``max_tokens``, does not fit in ``max_model_len``.

    A ValueError (HTTP 400) whose message states the maximum context length, as vLLM and OpenAI
    do; the server reports it with code ``context_length_exceeded``.
    """

    code = "context_length_exceeded"


def resolve_max_tokens(
    num_prompt_tokens: int, max_tokens: int | None, max_model_len: int, truncate: bool = False
) -> int:
    """How many tokens a request may generate; raise ContextLengthError when it cannot fit.

    ``max_tokens=None`` means "until the context is full". A prompt that leaves no room for one
    output token is always an error. With ``truncate`` a too-large ``max_tokens`` is cut to the
    room left (the old behaviour, ``--truncate-max-tokens``); without it the request is rejected.
    """
    room = max_model_len - num_prompt_tokens
    if room <= 0:
        raise ContextLengthError(
            f"This model's maximum context length is {max_model_len} tokens (max_model_len), "
            f"but the prompt has {num_prompt_tokens} tokens: shorten the prompt or raise "
            "max_model_len"
        )
    if max_tokens is None:
        return room
    if max_tokens > room and not truncate:
        raise ContextLengthError(
            f"This model's maximum context length is {max_model_len} tokens (max_model_len). "
            f"However, you requested {num_prompt_tokens + max_tokens} tokens "
            f"({num_prompt_tokens} in the prompt, {max_tokens} for the completion, max_tokens). "
            "Please reduce the prompt or max_tokens"
        )
    return min(max_tokens, room)
