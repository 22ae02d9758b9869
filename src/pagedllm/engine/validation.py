"""Check and normalise a user's prompt before anything is queued."""

from __future__ import annotations

from typing import Any

from pagedllm.sampling_params import SamplingParams


def check_params(params: SamplingParams, max_n: int) -> None:
    """Limits that depend on the engine's configuration (SamplingParams checks the rest)."""
    if params.n > max_n:
        raise ValueError(f"n must be <= {max_n} (the server's max_n), got {params.n}")


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
