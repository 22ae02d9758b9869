"""The grammar engine behind structured outputs: llguidance (docs/structured_outputs.md says why).

``GrammarCompiler`` turns a ``StructuredOutputParams`` into a validated llguidance matcher once
per distinct constraint (an LRU cache keyed by the constraint); every sequence then gets its own
``deep_copy`` of that prototype, which costs microseconds and shares nothing mutable.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Any

from .params import StructuredOutputParams

# Compact separators: a model constrained to flexible whitespace can pad JSON with blanks until
# max_tokens; OpenAI's own strict mode emits compact JSON too.
JSON_OPTIONS = {"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": False}


def _llguidance() -> Any:
    try:
        import llguidance
    except ImportError as exc:  # the dependency is in the `structured` extra
        raise ValueError(
            "structured outputs need the llguidance package: pip install 'pagedllm[structured]'"
        ) from exc
    return llguidance


def grammar_text(spec: StructuredOutputParams) -> str:
    """The llguidance grammar (its JSON grammar format) for one constraint."""
    ll = _llguidance()
    kind = spec.kind
    if kind == "json":
        return ll.LLMatcher.grammar_from_json_schema(spec.json, defaults=JSON_OPTIONS)
    if kind == "json_object":
        return ll.LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=JSON_OPTIONS)
    if kind == "regex":
        return ll.LLMatcher.grammar_from_regex(spec.regex)
    if kind == "choice":
        alternatives = " | ".join(json.dumps(c) for c in spec.choice)
        return ll.LLMatcher.grammar_from_lark(f"start: {alternatives}\n")
    from llguidance.gbnf_to_lark import any_to_lark

    # GBNF / EBNF (``root ::= ...``, as llama.cpp and xgrammar write it) becomes Lark
    return ll.LLMatcher.grammar_from_lark(any_to_lark(spec.grammar))


class GrammarCompiler:
    """Compiles constraints for one tokenizer; thread-safe (the server validates on its loop
    thread while the engine thread builds matchers)."""

    def __init__(self, tokenizer: Any, vocab_size: int, cache_size: int = 256) -> None:
        self._tokenizer = tokenizer
        self.vocab_size = vocab_size
        self._ll_tokenizer: Any = None
        self._cache: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self.compiled = 0  # constraints compiled (cache misses), for tests and metrics

    def _tokenizer_for_ll(self) -> Any:
        if self._ll_tokenizer is None:
            if self._tokenizer is None:
                raise ValueError("structured outputs need a tokenizer; this model has none")
            ll = _llguidance()
            backend = self._tokenizer.backend
            self._ll_tokenizer = ll.LLTokenizer(
                backend.to_str(),
                n_vocab=self.vocab_size,
                eos_token=sorted(self._tokenizer.eos_token_ids) or None,
            )
        return self._ll_tokenizer

    def matcher(self, spec: StructuredOutputParams) -> Any:
        """A fresh matcher for ``spec`` (ValueError naming the problem for a bad grammar)."""
        with self._lock:
            proto = self._cache.get(spec.key)
            if proto is not None:
                self._cache.move_to_end(spec.key)
            else:
                proto = self._compile(spec)
                self._cache[spec.key] = proto
                if len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
            return proto.deep_copy()

    def _compile(self, spec: StructuredOutputParams) -> Any:
        ll = _llguidance()
        tokenizer = self._tokenizer_for_ll()
        try:
            grammar = grammar_text(spec)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"structured_output.{spec.kind} is invalid: {exc}") from exc
        error = ll.LLMatcher.validate_grammar(grammar, tokenizer)
        if error and not error.startswith("WARNING"):
            raise ValueError(f"structured_output.{spec.kind} is invalid: {error}")
        proto = ll.LLMatcher(tokenizer, grammar, log_level=0)
        if proto.is_error():
            raise ValueError(f"structured_output.{spec.kind} is invalid: {proto.get_error()}")
        self.compiled += 1
        return proto
