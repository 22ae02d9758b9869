"""Incremental detokenization with stop strings.

Decoding (vLLM's prefix/read-offset scheme): the text of new tokens is the decode of a short
window ``ids[prefix_offset:]`` minus the decode of its already-emitted head
``ids[prefix_offset:read_offset]``. Decoding with a few tokens of left context keeps decoders
that depend on neighbours (leading-space rules of SentencePiece / Metaspace) right, and a
window keeps each step O(1) instead of re-decoding the whole output. When the window's text ends
in U+FFFD, the last token(s) hold only part of a UTF-8 sequence (byte-level BPE splits emoji and
CJK across tokens), so nothing is emitted until a later token completes the character.

Stop strings (semantics):

* They are searched in the decoded output text (never the prompt), across token boundaries,
  once at least ``min_tokens`` output tokens exist. When several match, the one that starts
  earliest wins (ties: the shorter, which completed first).
* On a match the text is cut just before the stop string, or just after it with
  ``include_stop_str_in_output``; ``add_tokens`` returns the stop string as ``stop_hit`` and
  the request must finish. Tokens of the same ``add_tokens`` call after the hit are ignored.
* Because a stop string may still be completing, deltas hold back the longest tail of the text
  that is a proper prefix of some stop string. Once the text diverges, that tail is released in
  a later delta. When the request finishes for another reason (length, EOS, stop token, abort),
  the engine calls ``flush()`` to get the held-back text (and any undecodable trailing bytes, as
  U+FFFD, exactly as a full decode shows them).
* Invariant: the concatenation of all deltas plus ``flush()`` equals ``output_text``; without a
  stop hit that is ``tokenizer.decode(output_ids, skip_special_tokens=...)``, except that a
  SentencePiece vocabulary with a space prefix (Llama 2 style) keeps the first output token's
  leading space, which a decode of the output alone strips: the text is the prompt's
  continuation (``▁Paris`` streams " Paris"), as in vLLM.
"""

from __future__ import annotations

from typing import Any

from pagedllm.engine.stop_matcher import StopMatcher
from pagedllm.sampling_params import SamplingParams

# Tokens of left context decoded with the first output token (vLLM uses 5 too).
_INITIAL_CONTEXT = 5
_REPLACEMENT_CHAR = "\ufffd"


class IncrementalDetokenizer:
    """Turns a request's output token ids into streamed text deltas, honoring stop strings.

    ``tokenizer`` needs ``.backend``: a ``tokenizers.Tokenizer`` (its ``decode(ids,
    skip_special_tokens=...)`` is the only method used).
    """

    def __init__(self, tokenizer: Any, prompt_token_ids: list[int], params: SamplingParams) -> None:
        self._backend = tokenizer.backend
        self._skip_special = params.skip_special_tokens
        self._stops = list(params.stop)
        # one automaton per SamplingParams (shared by the n samples); our state in it
        self._matcher: StopMatcher | None = params.stop_matcher() if self._stops else None
        self._state = 0
        self._include_stop = params.include_stop_str_in_output
        self._min_tokens = params.min_tokens
        # Only the tail of the prompt is ever decoded, so keep just that much.
        context = list(prompt_token_ids[-_INITIAL_CONTEXT:])
        self._ids: list[int] = context
        self._prefix_offset = 0
        self._read_offset = len(context)
        self._prefix_text = self._decode(context)
        self.output_token_ids: list[int] = []
        self._text = ""  # decoded output text (cut at a stop string), incl. held-back tail
        self._emitted = 0  # number of characters of _text already returned as deltas
        self.stop_hit: str | None = None
        self.finished = False

    @property
    def output_text(self) -> str:
        """The text returned to the caller so far (all deltas, and ``flush()`` once called)."""
        return self._text[: self._emitted]

    @property
    def pending_text(self) -> str:
        """Decoded text held back because it may begin a stop string."""
        return self._text[self._emitted :]

    def add_tokens(self, new_ids: list[int]) -> tuple[str, str | None]:
        """Append output tokens; return ``(delta_text, stop_hit)``.

        ``stop_hit`` is the matched stop string (the request must then finish) or ``None``.
        Calling again after a stop hit or ``flush()`` raises ``RuntimeError``.
        """
        if self.finished:
            raise RuntimeError("add_tokens after the detokenizer finished (stop hit or flush)")
        if self._matcher is None:  # no stop strings (the common case): nothing held back
            for token_id in new_ids:
                self.output_token_ids.append(token_id)
                piece = self._decode_next(token_id)
                if piece:
                    self._text += piece
            return self._take(len(self._text)), None
        for token_id in new_ids:
            self.output_token_ids.append(token_id)
            old_len = len(self._text)
            piece = self._decode_next(token_id)
            self._text += piece
            if self._matcher is not None:
                stop = self._check_stop(piece, old_len)
                if stop is not None:
                    self.stop_hit = stop
                    self.finished = True
                    return self._take(len(self._text)), stop
        return self._take(len(self._text) - self._held_back()), None

    def flush(self) -> str:
        """Finish without a stop hit: return everything still held back (idempotent)."""
        if not self.finished:
            self.finished = True
            # Undecodable trailing bytes were never emitted; a full decode shows them as U+FFFD.
            tail = self._decode(self._ids[self._prefix_offset :])
            if len(tail) > len(self._prefix_text):
                self._text += tail[len(self._prefix_text) :]
            self._prefix_offset = self._read_offset = len(self._ids)
        return self._take(len(self._text))

    def _decode(self, ids: list[int]) -> str:
        if not ids:
            return ""
        return self._backend.decode(ids, skip_special_tokens=self._skip_special)

    def _decode_next(self, token_id: int) -> str:
        """New complete text produced by appending ``token_id`` (may be "")."""
        self._ids.append(token_id)
        new_text = self._decode(self._ids[self._prefix_offset :])
        if len(new_text) <= len(self._prefix_text) or new_text.endswith(_REPLACEMENT_CHAR):
            # Nothing visible yet (special token skipped) or an incomplete UTF-8 sequence:
            # keep the window growing until the text is complete.
            return ""
        delta = new_text[len(self._prefix_text) :]
        # Slide the window: what was new becomes the context of the next step.
        self._prefix_text = self._decode(self._ids[self._read_offset :])
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        # Drop ids left of the window so memory stays bounded on long outputs.
        if self._prefix_offset > 0:
            del self._ids[: self._prefix_offset]
            self._read_offset -= self._prefix_offset
            self._prefix_offset = 0
        return delta

    def _check_stop(self, piece: str, old_len: int) -> str | None:
        """Feed the new text to the automaton; on a stop string ending in it, cut the text.

        Stop strings count once ``min_tokens`` output tokens exist; of those ending in the new
        text the earliest-starting wins (ties: the shorter, which completed first).
        """
        collect = len(self.output_token_ids) >= self._min_tokens
        self._state, matches = self._matcher.scan(self._state, piece, old_len, collect)
        if not matches:
            return None
        best = min(matches, key=lambda m: (m.start, m.end - m.start))
        stop = self._text[best.start : best.end]
        self._text = self._text[: best.end if self._include_stop else best.start]
        return stop

    def _held_back(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of a stop string."""
        held = 0 if self._matcher is None else self._matcher.held_back(self._state)
        # Never take back text that was already emitted.
        return min(held, len(self._text) - self._emitted)

    def _take(self, end: int) -> str:
        """Emit ``_text[_emitted:end]``."""
        end = max(end, self._emitted)
        delta = self._text[self._emitted : end]
        self._emitted = end
        return delta
