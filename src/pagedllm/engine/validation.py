"""Check and normalise a user's prompt before anything is queued."""

from __future__ import annotations

from typing import Any

from pagedllm.sampling_params import SamplingParams


def check_params(params: SamplingParams, max_n: int) -> None:
    """Limits that depend on the engine's configuration (SamplingParams checks the rest)."""
    if params.n > max_n:
        raise ValueError(f"n must be <= {max_n} (the server's max_n), got {params.n}")


def check_logit_bias(params: SamplingParams, vocab_size: int) -> None:
    """Every ``logit_bias`` token id inside the vocabulary."""
    for token_id in params.logit_bias or {}:
        if token_id >= vocab_size:
            raise ValueError(
                f"logit_bias token id {token_id} is outside the vocabulary (size {vocab_size})"
            )


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


# A token's text is at most this many times longer than its vocabulary spelling: normalizers
# (NFKC) and byte-fallback tokens can change lengths a little; the margin keeps the bound safe.
_CHARS_PER_TOKEN_MARGIN = 4
_max_token_chars: dict[int, int] = {}


def max_token_chars(tokenizer: Any) -> int:
    """The most characters of text one token of ``tokenizer`` can stand for (cached)."""
    key = id(tokenizer)
    value = _max_token_chars.get(key)
    if value is None:
        vocab = tokenizer.backend.get_vocab(with_added_tokens=True)
        value = max((len(token) for token in vocab), default=1) * _CHARS_PER_TOKEN_MARGIN
        _max_token_chars[key] = value
    return value


def check_text_size(text: str, tokenizer: Any, max_model_len: int) -> None:
    """Reject text that certainly tokenizes to ``max_model_len`` tokens or more, *before*
    tokenizing it: a multi-megabyte prompt costs seconds of CPU to tokenize, and that time would
    be stolen from every other request. Text that passes is tokenized and checked exactly."""
    if tokenizer is None or not hasattr(tokenizer, "backend"):
        return
    limit = max_model_len * max_token_chars(tokenizer)
    if len(text) >= limit:
        raise ValueError(
            f"the prompt has {len(text)} characters, more than max_model_len ({max_model_len}) "
            "tokens can hold: shorten the prompt"
        )
