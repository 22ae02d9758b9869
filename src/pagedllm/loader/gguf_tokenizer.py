"""Build a ``Tokenizer`` from the vocabulary a GGUF file carries in its metadata.

A GGUF has no ``tokenizer.json``: llama.cpp stores the tokens, merges, token types and special
ids under ``tokenizer.ggml.*``. ``tokenizer.ggml.model`` says which kind of vocabulary it is:

* ``gpt2``: byte-level BPE (Llama 3, Qwen, SmolLM, ...); the pre-tokenizer split regex comes
  from ``tokenizer.ggml.pre`` the way transformers' GGUF converter (and llama.cpp) pick it.
* ``llama``: SentencePiece (Llama 1/2, Mistral v0.1, Gemma 2/3, ...), built in
  ``gguf_spm_tokenizer.py``.

Any other kind (``t5`` Unigram, ``bert`` WordPiece, ``rwkv``, ...) is refused by name.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

from tokenizers import AddedToken, Regex, decoders, pre_tokenizers, processors
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers.models import BPE

from .gguf_spm_tokenizer import build_spm_backend
from .tokenizer import Tokenizer

logger = logging.getLogger(__name__)

_TOKEN_CONTROL = 3  # llama.cpp token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 6 byte
_TOKEN_USER_DEFINED = 4

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# tokenizer.ggml.pre -> the split regex its merges were learned with.
_PRE_SPLITS = {
    "llama3": _LLAMA3_SPLIT,
    "llama-v3": _LLAMA3_SPLIT,
    "llama-bpe": _LLAMA3_SPLIT,
    "falcon3": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT,
    "dbrx": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT,
    "deepseek-r1-qwen": _QWEN2_SPLIT,
}
# Pre names whose split is GPT-2's own regex (ByteLevel(use_regex=True)).
_GPT2_PRES = {"default", "gpt2", "gpt-2", "olmo", "smollm", "starcoder", "refact", "jina-v2-code"}


@lru_cache(maxsize=1)
def _byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character table (bytes_to_unicode)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _pre_tokenizer(pre: str | None) -> Any:
    """The pre-tokenizer for a ``tokenizer.ggml.pre`` name.

    ``smollm`` (StarCoder-style vocab) isolates every digit before GPT-2's regex, exactly as
    the original SmolLM2 ``tokenizer.json`` and llama.cpp do. (transformers' GGUF converter uses
    plain GPT-2 here; its vocabulary has no multi-digit tokens, so the ids come out the same.)
    """
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in _PRE_SPLITS:
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_PRE_SPLITS[pre]), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    if pre in ("smollm", "starcoder", "refact"):
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if pre not in _GPT2_PRES:
        logger.warning("unknown tokenizer.ggml.pre %r: using GPT-2's pre-tokenizer", pre)
    return byte_level


def _add_tokens(backend: BackendTokenizer, meta: dict[str, Any], alphabet: set[str] | None) -> None:
    """Control tokens become special added tokens, user-defined ones plain added tokens, all
    matched whole in the raw text (as llama.cpp does), so ``<|im_start|>`` stays one token
    instead of being cut into pieces.

    With a byte-level ``alphabet``, a control token spelled outside it is a llama.cpp mislabel;
    adding it would grow the vocabulary past the model's (transformers skips these too).
    """
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    special, plain = [], []
    for token, kind in zip(tokens, meta.get("tokenizer.ggml.token_type", []), strict=False):
        if not token:
            continue
        if kind == _TOKEN_CONTROL and (alphabet is None or set(token) <= alphabet):
            special.append(AddedToken(token, normalized=False, special=True))
        elif kind == _TOKEN_USER_DEFINED:
            plain.append(AddedToken(token, normalized=False, special=False))
    backend.add_special_tokens(special)
    backend.add_tokens(plain)  # add_special_tokens would mark them special (skipped in decode)


def _byte_level_backend(meta: dict[str, Any]) -> BackendTokenizer:
    alphabet_table = _byte_alphabet()
    alphabet = set(alphabet_table.values())
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    # Tokens spelled outside the byte alphabet are respelled byte by byte, as transformers does.
    vocab = {
        (t if set(t) <= alphabet else "".join(alphabet_table[b] for b in t.encode("utf-8"))): i
        for i, t in enumerate(tokens)
    }
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    backend = BackendTokenizer(BPE(vocab=vocab, merges=merges, fuse_unk=False))
    backend.pre_tokenizer = _pre_tokenizer(meta.get("tokenizer.ggml.pre"))
    backend.decoder = decoders.ByteLevel()
    _add_tokens(backend, meta, alphabet)
    return backend


def _post_processor(tokens: list[str], bos_id: int | None, eos_id: int | None,
                    add_bos: bool, add_eos: bool) -> Any:  # fmt: skip
    """What ``encode(..., add_special_tokens=True)`` wraps around the text, or ``None``."""
    head = [(tokens[bos_id], bos_id)] if add_bos and bos_id is not None else []
    tail = [(tokens[eos_id], eos_id)] if add_eos and eos_id is not None else []
    if not head and not tail:
        return None
    a = " ".join([t for t, _ in head] + ["$A"] + [t for t, _ in tail])
    b = " ".join([t for t, _ in head] + ["$B"] + [t for t, _ in tail])
    return processors.TemplateProcessing(
        single=a, pair=f"{a} {b}", special_tokens=list(dict(head + tail).items())
    )


def build_gguf_tokenizer(meta: dict[str, Any], eos_token_ids: list[int]) -> Tokenizer:
    """A ``Tokenizer`` from GGUF metadata (``tokenizer.ggml.*`` keys, values already decoded).

    ``eos_token_ids`` are the ids that end generation, primary EOS first.
    """
    model = meta.get("tokenizer.ggml.model")
    if model == "gpt2":
        backend = _byte_level_backend(meta)
        # Byte-level vocabularies add no BOS unless the file says so (SmolLM2 says False).
        add_bos_default = False
    elif model == "llama":
        backend = build_spm_backend(meta)
        _add_tokens(backend, meta, None)
        add_bos_default = True  # llama.cpp's default for SentencePiece vocabularies
    else:
        raise ValueError(
            f"GGUF field tokenizer.ggml.model is {model!r}: only 'gpt2' (byte-level BPE) and "
            "'llama' (SentencePiece) vocabularies are supported; pass tokenizer=<a Hugging Face "
            "directory with tokenizer.json> instead"
        )
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    bos_id = meta.get("tokenizer.ggml.bos_token_id")
    post = _post_processor(
        tokens,
        bos_id,
        meta.get("tokenizer.ggml.eos_token_id"),
        bool(meta.get("tokenizer.ggml.add_bos_token", add_bos_default)),
        bool(meta.get("tokenizer.ggml.add_eos_token", False)),
    )
    if post is not None:
        backend.post_processor = post
    return Tokenizer(
        backend,
        bos_token_id=bos_id,
        eos_token_ids=eos_token_ids,
        pad_token_id=meta.get("tokenizer.ggml.padding_token_id"),
        unk_token_id=meta.get("tokenizer.ggml.unknown_token_id"),
        chat_template=meta.get("tokenizer.chat_template"),
    )
