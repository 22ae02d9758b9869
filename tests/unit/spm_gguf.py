"""Small GGUF files holding a SentencePiece vocabulary, and llama.cpp's SPM tokenizer written
out in plain Python as a reference.

The vocabulary is real BPE: the first merges of the bundled SmolLM2 tokenizer, respelled from
GPT-2's byte alphabet into text with ``▁`` for a space (merges whose pieces are not whole UTF-8
characters are dropped), each merged piece scored ``-rank`` as SentencePiece's BPE trainer
scores them. Single characters follow with lower scores, then the 256 byte tokens; characters
outside the vocabulary (emoji, most CJK) take the byte fallback.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import gguf

from pagedllm.loader.bundled import bundled_model_path
from pagedllm.loader.gguf_loader import read_metadata
from pagedllm.loader.gguf_tokenizer import _byte_alphabet

SPACE = "▁"
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, BYTE = 1, 2, 3, 4, 6
# Characters every vocabulary knows (the rest of the alphabet comes from the merged pieces).
_BASE = [chr(c) for c in range(0x21, 0x7F)] + list("éèàüöäçñßøå—–’“”«»…·°€£") + ["東", "京"]

LLAMA_SPECIALS = [("<unk>", UNKNOWN), ("<s>", CONTROL), ("</s>", CONTROL)]
GEMMA_SPECIALS = [
    ("<pad>", CONTROL),
    ("<eos>", CONTROL),
    ("<bos>", CONTROL),
    ("<unk>", UNKNOWN),
    ("<mask>", CONTROL),
    ("<start_of_turn>", CONTROL),
    ("<end_of_turn>", CONTROL),
    # Gemma stores runs of spaces as user-defined tokens spelled with real spaces
    # (convert_hf_to_gguf's "pre-normalized" user-defined spaces), and newline runs
    ("  ", USER_DEFINED),
    ("   ", USER_DEFINED),
    ("    ", USER_DEFINED),
    ("\n", USER_DEFINED),
    ("\n\n", USER_DEFINED),
    ("<unused0>", CONTROL),
    ("<h1>", USER_DEFINED),
]


@lru_cache(maxsize=1)
def _bundled_tokens_and_merges() -> tuple[list[str], list[str]]:
    meta = read_metadata(gguf.GGUFReader(str(bundled_model_path())))
    return meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.merges"]


def _text(byte_level: str) -> str | None:
    table = {c: b for b, c in _byte_alphabet().items()}
    try:
        raw = bytes(table[c] for c in byte_level)
        return raw.decode("utf-8").replace(" ", SPACE)
    except (KeyError, UnicodeDecodeError):
        return None


def spm_pieces(num_merges: int, *, gemma: bool) -> list[tuple[str, float, int]]:
    """``(piece, score, type)`` for the whole vocabulary, in id order."""
    specials = GEMMA_SPECIALS if gemma else LLAMA_SPECIALS
    pieces: list[tuple[str, float, int]] = [(t, 0.0, kind) for t, kind in specials]
    if not gemma:  # Llama puts the byte tokens right after <unk> <s> </s>
        pieces += [(f"<0x{b:02X}>", 0.0, BYTE) for b in range(256)]
    known = {p for p, _, _ in pieces} | set(_BASE) | {SPACE}
    _, merges = _bundled_tokens_and_merges()
    merged: list[str] = []
    for merge in merges:
        if len(merged) == num_merges:
            break
        left, right = (_text(part) for part in merge.split(" ", 1))
        if left is None or right is None or left not in known or right not in known:
            continue
        piece = left + right
        # Gemma's space runs are the user-defined tokens above, not merged pieces
        if piece in known or (gemma and set(piece) == {SPACE}):
            continue
        known.add(piece)
        merged.append(piece)
    pieces += [(p, -float(i), NORMAL) for i, p in enumerate(merged)]
    chars = [SPACE] + sorted(set(_BASE) - {p for p, _, _ in pieces})
    pieces += [(c, -float(len(merged) + i), NORMAL) for i, c in enumerate(chars)]
    if gemma:  # Gemma's byte tokens come after the text pieces
        pieces += [(f"<0x{b:02X}>", 0.0, BYTE) for b in range(256)]
    return pieces


def write_spm_gguf(
    path: Path,
    *,
    gemma: bool,
    num_merges: int = 3000,
    chat_template: str | None = None,
    arch: str | None = None,
    model: Callable[[Any, int], dict[str, Any]] | None = None,
) -> list[tuple[str, float, int]]:
    """A GGUF with a SentencePiece vocabulary (Llama style, or Gemma style: no space prefix,
    Gemma's special tokens). ``model(writer, vocab_size)`` makes it a loadable model: it adds
    the model's metadata keys and returns its tensors."""
    pieces = spm_pieces(num_merges, gemma=gemma)
    arch = arch or ("gemma2" if gemma else "llama")
    w = gguf.GGUFWriter(str(path), arch)
    tensors = model(w, len(pieces)) if model is not None else {}
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list([p for p, _, _ in pieces])
    w.add_token_scores([s for _, s, _ in pieces])
    w.add_token_types([k for _, _, k in pieces])
    ids = {p: i for i, (p, _, _) in enumerate(pieces)}
    if gemma:
        w.add_bos_token_id(ids["<bos>"])
        w.add_eos_token_id(ids["<eos>"])
        w.add_unk_token_id(ids["<unk>"])
        w.add_pad_token_id(ids["<pad>"])
        w.add_eot_token_id(ids["<end_of_turn>"])
        w.add_add_space_prefix(False)
    else:
        w.add_bos_token_id(ids["<s>"])
        w.add_eos_token_id(ids["</s>"])
        w.add_unk_token_id(ids["<unk>"])
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    if chat_template is not None:
        w.add_chat_template(chat_template)
    finish_gguf(w, tensors)
    return pieces


def finish_gguf(writer: Any, tensors: dict[str, Any]) -> None:
    """Add ``tensors`` to a ``GGUFWriter`` whose metadata is complete, write the file, close."""
    for name, data in tensors.items():
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


class ReferenceSpm:
    """llama.cpp's SPM tokenizer (``llm_tokenizer_spm_session`` plus its special-token
    partition and space-prefix rule), re-implemented here as an oracle."""

    def __init__(self, pieces: list[tuple[str, float, int]], add_space_prefix: bool) -> None:
        self.ids: dict[str, int] = {}
        for i, (p, _, _) in enumerate(pieces):
            self.ids.setdefault(p, i)
        self.scores = [s for _, s, _ in pieces]
        self.prefix = add_space_prefix
        # matched in the raw text, longest first (llama.cpp's cache_special_tokens order)
        self.specials = sorted(
            (p for p, _, k in pieces if k in (CONTROL, USER_DEFINED)), key=len, reverse=True
        )

    def _partition(self, text: str) -> list[str | int]:
        fragments: list[str | int] = [text] if text else []
        for special in self.specials:
            out: list[str | int] = []
            for frag in fragments:
                if isinstance(frag, int):
                    out.append(frag)
                    continue
                parts = frag.split(special)
                for j, part in enumerate(parts):
                    if j:
                        out.append(self.ids[special])
                    if part:
                        out.append(part)
            fragments = out
        return fragments

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        prev_special = True
        for frag in self._partition(text):
            if isinstance(frag, int):
                ids.append(frag)
                prev_special = True
                continue
            if self.prefix and prev_special:
                frag = " " + frag
            ids += self._spm(frag.replace(" ", SPACE))
            prev_special = False
        return ids

    def _spm(self, text: str) -> list[int]:
        symbols = list(text)  # merged text per slot; "" once merged away
        nxt = list(range(1, len(text))) + [-1]
        prv = list(range(-1, len(text) - 1))
        heap: list[tuple[float, int, int, str]] = []
        rev: dict[str, tuple[str, str]] = {}

        def push(left: int, right: int) -> None:
            if left < 0 or right < 0:
                return
            joined = symbols[left] + symbols[right]
            if joined in self.ids:
                heapq.heappush(heap, (-self.scores[self.ids[joined]], left, right, joined))
                rev[joined] = (symbols[left], symbols[right])

        for i in range(1, len(text)):
            push(i - 1, i)
        while heap:
            _, left, right, joined = heapq.heappop(heap)
            if symbols[left] + symbols[right] != joined or not symbols[right]:
                continue  # stale: one side changed since this pair was queued
            symbols[left], symbols[right] = joined, ""
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prv[nxt[right]] = left
            push(prv[left], left)
            push(left, nxt[left])
        out: list[int] = []
        i = 0
        while i >= 0:
            self._resegment(symbols[i], rev, out)
            i = nxt[i]
        return out

    def _resegment(self, piece: str, rev: dict[str, tuple[str, str]], out: list[int]) -> None:
        if piece in self.ids:
            out.append(self.ids[piece])
        elif piece in rev:
            for part in rev[piece]:
                self._resegment(part, rev, out)
        else:
            out += [self.ids[f"<0x{b:02X}>"] for b in piece.encode("utf-8")]
