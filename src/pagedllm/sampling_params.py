"""Per-request sampling and stopping parameters, validated at construction.

Pure Python (no torch): the core and the server both build these. Every invalid value raises
``ValueError`` (or ``TypeError`` for a wrong type) naming the field and the allowed range.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pagedllm.structured.params import StructuredOutputParams

_GREEDY_EPS = 1e-5


@dataclass(slots=True)
class SamplingParams:
    """How to sample the next tokens of one request and when to stop.

    Mirrors vLLM's ``SamplingParams`` fields that pagedllm supports. ``temperature == 0``
    means greedy decoding. ``seed`` makes a request's samples reproducible whatever else
    shares its batch.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: disabled
    min_p: float = 0.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    max_tokens: int | None = 16  # None: up to the context length
    min_tokens: int = 0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    logprobs: int | None = None  # number of top logprobs per generated token
    prompt_logprobs: int | None = None  # number of top logprobs per prompt token
    skip_special_tokens: bool = True
    # The output must match this JSON schema / regex / choice / grammar (structured/).
    structured_output: StructuredOutputParams | None = None
    # token id -> bias in [-100, 100] added to its logit (OpenAI's logit_bias); ids are checked
    # against the model's vocabulary when the request is added.
    logit_bias: dict[int, float] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        elif self.stop is None:
            self.stop = []
        if self.stop_token_ids is None:
            self.stop_token_ids = []
        if self.top_k == -1:
            self.top_k = 0
        self.structured_output = StructuredOutputParams.from_value(self.structured_output)
        self._validate()
        self.logit_bias = _check_logit_bias(self.logit_bias)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SamplingParams:
        """Build from a dict, rejecting keys that are not fields (with the allowed names)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown sampling parameter(s) {unknown}; allowed: {sorted(names)}")
        return cls(**values)

    @property
    def greedy(self) -> bool:
        """True when the request takes the most likely token at every step."""
        return self.temperature < _GREEDY_EPS

    def clone(self, **changes: Any) -> SamplingParams:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def _validate(self) -> None:
        _check_int("n", self.n, low=1)
        _check_number("temperature", self.temperature, low=0.0)
        _check_number("top_p", self.top_p)
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        _check_int("top_k", self.top_k, low=0)
        _check_number("min_p", self.min_p)
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.seed is not None:
            _check_int("seed", self.seed)
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            _check_number(name, value)
            if not -2.0 <= value <= 2.0:
                raise ValueError(f"{name} must be in [-2, 2], got {value}")
        _check_number("repetition_penalty", self.repetition_penalty)
        if self.repetition_penalty <= 0.0:
            raise ValueError(
                f"repetition_penalty must be > 0 (1 disables it), got {self.repetition_penalty}"
            )
        if self.max_tokens is not None:
            _check_int("max_tokens", self.max_tokens, low=1)
        _check_int("min_tokens", self.min_tokens, low=0)
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(
                f"min_tokens ({self.min_tokens}) must be <= max_tokens ({self.max_tokens})"
            )
        if not isinstance(self.stop, list) or not all(isinstance(s, str) for s in self.stop):
            raise TypeError("stop must be a string or a list of strings")
        if any(s == "" for s in self.stop):
            raise ValueError("stop strings must not be empty")
        if not isinstance(self.stop_token_ids, list):
            raise TypeError("stop_token_ids must be a list of integers")
        for token_id in self.stop_token_ids:
            _check_int("stop_token_ids[]", token_id, low=0)
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None:
                _check_int(name, value, low=0, high=20)


def _check_logit_bias(bias: Any) -> dict[int, float] | None:
    """``{token id: bias}`` with ids as ints (JSON keys arrive as strings) and biases in
    [-100, 100]; an empty dict is None."""
    if bias is None:
        return None
    if not isinstance(bias, dict):
        raise TypeError(f"logit_bias must be a mapping of token id to bias, got {bias!r}")
    out: dict[int, float] = {}
    for key, value in bias.items():
        try:
            token_id = int(key)
        except (TypeError, ValueError):
            raise TypeError(f"logit_bias keys must be token ids, got {key!r}") from None
        _check_int("logit_bias token id", token_id, low=0)
        _check_number(f"logit_bias[{token_id}]", value)
        if not -100.0 <= value <= 100.0:
            raise ValueError(f"logit_bias[{token_id}] must be in [-100, 100], got {value}")
        out[token_id] = float(value)
    return out or None


def _check_int(name: str, value: Any, low: int | None = None, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")


def _check_number(name: str, value: Any, low: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if value != value:  # NaN
        raise ValueError(f"{name} must not be NaN")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
