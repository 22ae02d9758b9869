"""SentencePiece vocabularies from GGUF files (``tokenizer.ggml.model == "llama"``).

Llama 1/2, Mistral v0.1, Gemma 2/3 and others carry a SentencePiece (BPE-trained) vocabulary:
``tokens``, ``scores`` and ``token_type`` under ``tokenizer.ggml.*``, and usually no merges.
llama.cpp, the reference for these files, tokenizes them like this:

* Added-token matching first: control (3) and user-defined (4) tokens are found whole in the
  raw text (a Gemma run of spaces, stored with real spaces, is a user-defined token).
* Every remaining text fragment gets a leading space when ``add_space_prefix`` is true (the
  default; Gemma says false) and the fragment starts the text or follows an added token; then
  spaces become ``▁``.
* Symbols start as single characters; the adjacent pair whose concatenation is a vocabulary
  token with the highest score merges first (leftmost on ties), until no pair is a token.
  What is left outside the vocabulary becomes byte tokens ``<0xNN>`` (byte fallback).

The ``tokenizers`` equivalent is a BPE model whose merges are every split of every token into
two tokens, ranked by the merged token's score: BPE then always applies the available merge of
the best-scoring result, which is exactly that greedy loop. (Gemma ranks by position in the
file instead, as transformers does: Gemma's scores do not follow its merge order.) A file that
does carry ``tokenizer.ggml.merges`` (converted from a ``tokenizer.json``) uses those.
Decoding turns ``▁`` back into spaces, fuses byte tokens into UTF-8 and, with a space prefix,
drops the one leading space encoding added.
"""

from __future__ import annotations

from typing import Any

from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import decoders, normalizers
from tokenizers.models import BPE

_SPACE = "▁"  # U+2581, SentencePiece's visible space
# general.architecture values whose merge order is the token order, not the scores
_POSITION_RANKED = {"gemma", "gemma2", "gemma3"}


def derive_merges(tokens: list[str], ranks: list[float]) -> list[tuple[str, str]]:
    """BPE merges equivalent to SentencePiece's greedy merge over ``tokens``.

    Every way to cut a token into two tokens is a merge; merges are ordered by the merged
    token's rank (lower first), then by token id and cut position so the order is fixed.
    """
    ids: dict[str, int] = {}
    for i, token in enumerate(tokens):
        ids.setdefault(token, i)
    candidates = []
    for i, token in enumerate(tokens):
        if ids[token] != i:
            continue  # a duplicate spelling: the first id owns it
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in ids and right in ids:
                candidates.append((ranks[i], i, cut, left, right))
    candidates.sort(key=lambda c: c[:3])
    return [(left, right) for *_, left, right in candidates]


def _merges(meta: dict[str, Any], tokens: list[str]) -> list[tuple[str, str]]:
    listed = meta.get("tokenizer.ggml.merges")
    if listed:
        return [tuple(m.split(" ", 1)) for m in listed]  # type: ignore[misc]
    if meta.get("general.architecture") in _POSITION_RANKED:
        return derive_merges(tokens, list(range(len(tokens))))
    scores = meta.get("tokenizer.ggml.scores")
    if scores is None or len(scores) != len(tokens):
        raise ValueError(
            "GGUF field tokenizer.ggml.scores is missing or not one score per token; a "
            "SentencePiece vocabulary without merges needs it"
        )
    return derive_merges(tokens, [-float(s) for s in scores])


def build_spm_backend(meta: dict[str, Any]) -> BackendTokenizer:
    """A ``tokenizers.Tokenizer`` for a GGUF SentencePiece vocabulary.

    The caller adds the control / user-defined tokens (matched in the raw text) and the
    BOS/EOS post-processor, the same way for every GGUF vocabulary kind.
    """
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    vocab: dict[str, int] = {}
    for i, token in enumerate(tokens):
        vocab.setdefault(token, i)
    unk_id = meta.get("tokenizer.ggml.unknown_token_id")
    unk = tokens[unk_id] if unk_id is not None and 0 <= unk_id < len(tokens) else None
    model = BPE(
        vocab=vocab,
        merges=_merges(meta, tokens),
        unk_token=unk,
        fuse_unk=True,
        byte_fallback=True,
    )
    backend = BackendTokenizer(model)
    add_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
    replace = normalizers.Replace(" ", _SPACE)
    # The normalizer runs on each fragment between added tokens: llama.cpp's "prefix after a
    # special token". (Metaspace would skip the prefix on text already starting with a space.)
    backend.normalizer = (
        normalizers.Sequence([normalizers.Prepend(_SPACE), replace]) if add_prefix else replace
    )
    steps = [decoders.Replace(_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_prefix:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    backend.decoder = decoders.Sequence(steps)
    return backend
