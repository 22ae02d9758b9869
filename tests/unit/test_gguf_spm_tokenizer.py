"""SentencePiece GGUF vocabularies (``tokenizer.ggml.model == "llama"``): Llama style (space
prefix) and Gemma style (no prefix, Gemma's special tokens), checked against two oracles:
llama.cpp's SPM algorithm re-implemented in ``spm_gguf.py``, and transformers' own GGUF
tokenizer conversion of the same file."""

from __future__ import annotations

import numpy as np
import pytest
from spm_gguf import NORMAL, ReferenceSpm, write_spm_gguf

from pagedllm.engine.detokenizer import IncrementalDetokenizer
from pagedllm.loader.gguf_loader import read_metadata
from pagedllm.loader.gguf_spm_tokenizer import derive_merges
from pagedllm.loader.gguf_tokenizer import build_gguf_tokenizer
from pagedllm.sampling_params import SamplingParams

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

# Plain text: every oracle agrees on these.
TEXTS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "naïve café — Zürich, 東京, Привет мир",  # Cyrillic is not in the vocabulary: bytes
    "emoji 🤗🚀 and 👩‍👩‍👧",
    "def f(x):\n    return x ** 2  # square\n\n\tindent",
    "numbers 123 4567 3.14159 1,000,000",
    "a  b   c    d",
    "line\nbreak\n\n\nnewlines   \t end   ",
    "trailing spaces   ",
    "I'm sure they've done it, haven't they?",
    "",
]
# Special-token text (each style's own) and leading spaces: llama.cpp puts a space before the
# text that starts a prompt or follows a special token, even one already starting with a space.
# transformers' Llama converter (Metaspace, prepend "first") does neither, so for the Llama
# style these are checked against the llama.cpp reference only.
LONG_SPACE_RUN = "a     five spaces"
EDGE_TEXTS = [
    # Gemma's space runs of 2-4 are user-defined tokens, which llama.cpp matches in the raw
    # text (four spaces, then "▁five"); transformers respells them "▁▁" and merges instead,
    # which differs once a run is longer than the longest run token.
    LONG_SPACE_RUN,
    " leading space",
    "  two leading spaces",
    " ",
    "<s>[INST] hi [/INST] hello</s>",
    "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n",
    "x<unused0>y<h1>z<mask>",
]
STYLES = ["llama", "gemma"]
TRANSFORMERS_DIFFERS = {"llama": set(EDGE_TEXTS), "gemma": {LONG_SPACE_RUN}}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("spm")
    out = {}
    for style in STYLES:
        directory = root / style
        directory.mkdir()
        path = directory / f"{style}.gguf"
        pieces = write_spm_gguf(
            path, gemma=style == "gemma", chat_template=GEMMA_TEMPLATE if style == "gemma" else None
        )
        out[style] = (path, pieces)
    return out


def _ours(path):
    meta = read_metadata(gguf.GGUFReader(str(path)))
    eos = [meta["tokenizer.ggml.eos_token_id"]]
    if "tokenizer.ggml.eot_token_id" in meta:
        eos.append(meta["tokenizer.ggml.eot_token_id"])
    return build_gguf_tokenizer(meta, eos)


@pytest.fixture(scope="module")
def toks(files):
    """style -> (our tokenizer, transformers' tokenizer, llama.cpp reference, pieces)"""
    out = {}
    for style, (path, pieces) in files.items():
        hf = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        ref = ReferenceSpm(pieces, add_space_prefix=style == "llama")
        out[style] = (_ours(path), hf, ref, pieces)
    return out


def test_vocabulary_exercises_merges(toks):
    for style in STYLES:
        tok, _, _, pieces = toks[style]
        assert sum(k == NORMAL for _, _, k in pieces) > 3000
        ids = tok.encode("The quick brown fox jumps over the lazy dog.")
        # whole words from merges, not characters
        assert len(ids) < 20
        assert "▁quick" in tok.convert_ids_to_tokens(ids)


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("text", TEXTS + EDGE_TEXTS)
def test_encode_equals_llama_cpp_reference(toks, style, text):
    tok, _, ref, _ = toks[style]
    assert tok.encode(text) == ref.encode(text)


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("text", TEXTS + EDGE_TEXTS)
def test_encode_decode_equal_transformers(toks, style, text):
    tok, hf, _, _ = toks[style]
    ids = tok.encode(text)
    if text not in TRANSFORMERS_DIFFERS[style]:
        assert ids == hf.encode(text, add_special_tokens=False)
        # BOS comes first (add_bos_token), as the file says
        assert tok.encode(text, add_special_tokens=True) == hf.encode(text)
    for skip in (False, True):
        assert tok.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("text", TEXTS + EDGE_TEXTS)
def test_decode_round_trips(toks, style, text):
    tok, _, _, _ = toks[style]
    ids = tok.encode(text)
    if style == "llama" and "<s>" in text:
        # the space encoding puts after a special token stays in the text
        assert tok.decode(ids, skip_special_tokens=False) != text
    else:
        assert tok.decode(ids, skip_special_tokens=False) == text


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("text", TEXTS + EDGE_TEXTS)
def test_incremental_detokenizer_equals_full_decode(toks, style, text):
    """Streamed text is the prompt's continuation. A full decode of the output ids alone is
    the same text, except that with a space prefix it drops the first token's leading space
    (``Strip``), which the stream keeps: ``▁Paris`` after a prompt streams " Paris"."""
    tok, _, _, _ = toks[style]
    prompt = tok.encode("Say something:", add_special_tokens=True)
    ids = tok.encode(text)
    for skip in (True, False):
        detok = IncrementalDetokenizer(tok, prompt, SamplingParams(skip_special_tokens=skip))
        deltas = []
        for token_id in ids:
            delta, stop = detok.add_tokens([token_id])
            assert stop is None
            deltas.append(delta)
        deltas.append(detok.flush())
        full = tok.decode(ids, skip_special_tokens=skip)
        shown = [t for t in ids if not (skip and t in tok.all_special_ids)]
        if style == "llama" and shown and tok.convert_ids_to_tokens(shown[0]).startswith("▁"):
            full = " " + full
        assert "".join(deltas) == full
        assert all("\ufffd" not in d for d in deltas)


def test_special_tokens_and_attributes(toks):
    llama, _, _, _ = toks["llama"]
    assert (llama.bos_token, llama.eos_token, llama.unk_token) == ("<s>", "</s>", "<unk>")
    assert llama.encode("hi", add_special_tokens=True)[0] == llama.bos_token_id == 1
    gemma, hf, _, _ = toks["gemma"]
    assert (gemma.bos_token, gemma.eos_token, gemma.pad_token) == ("<bos>", "<eos>", "<pad>")
    end_of_turn = gemma.convert_tokens_to_ids("<end_of_turn>")
    assert gemma.eos_token_ids == {gemma.eos_token_id, end_of_turn}
    assert gemma.encode("<start_of_turn>") == [gemma.convert_tokens_to_ids("<start_of_turn>")]
    # user-defined tokens are whole tokens but not special: decoding keeps them
    ids = gemma.encode("a  b<h1>")
    assert gemma.convert_ids_to_tokens(ids)[1] == "  "
    assert gemma.decode(ids) == "a  b<h1>" == hf.decode(ids, skip_special_tokens=True)
    assert gemma.decode(gemma.encode("<bos>x<end_of_turn>")) == "x"
    assert set(hf.all_special_ids) <= set(gemma.all_special_ids)
    assert gemma.vocab_size == len(hf) == len(toks["gemma"][3])


CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [
        {"role": "user", "content": "Name a color. 🎨"},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "  Another one,\nplease.  "},
    ],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_gemma_chat_template_from_the_file(toks, messages):
    gemma, hf, _, _ = toks["gemma"]
    text = gemma.apply_chat_template(messages, tokenize=False)
    assert text == hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<bos><start_of_turn>user\n")
    assert text.endswith("<end_of_turn>\n<start_of_turn>model\n")
    theirs = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    if isinstance(theirs, dict) or hasattr(theirs, "input_ids"):
        theirs = theirs["input_ids"]
    ours = gemma.apply_chat_template(messages)
    assert ours == list(theirs)
    assert ours.count(gemma.bos_token_id) == 1  # the template writes BOS; encode adds none


def test_merge_order_follows_scores_or_gemma_positions():
    tokens = ["a", "b", "c", "ab", "bc"]
    # ranks (lower first): "bc" before "ab"
    assert derive_merges(tokens, [0.0, 0.0, 0.0, 2.0, 1.0]) == [
        ("b", "c"),
        ("a", "b"),
    ]

    def encode(arch, scores):
        meta = {
            "general.architecture": arch,
            "tokenizer.ggml.model": "llama",
            "tokenizer.ggml.tokens": tokens + ["<0x61>"],
            "tokenizer.ggml.scores": scores + [0.0],
            "tokenizer.ggml.token_type": [1] * 5 + [6],
            "tokenizer.ggml.add_space_prefix": False,
        }
        tok = build_gguf_tokenizer(meta, [])
        return tok.convert_ids_to_tokens(tok.encode("abc"))

    assert encode("llama", [-5.0, -5.0, -5.0, -2.0, -1.0]) == ["a", "bc"]
    assert encode("llama", [-5.0, -5.0, -5.0, -1.0, -2.0]) == ["ab", "c"]
    # Gemma ranks by position whatever the scores say: "ab" comes first
    assert encode("gemma3", [-5.0, -5.0, -5.0, -2.0, -1.0]) == ["ab", "c"]


def test_merges_in_the_file_win_and_eos_is_added_when_asked():
    meta = {
        "general.architecture": "llama",
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": ["<s>", "</s>", "a", "b", "c", "ab", "bc"],
        "tokenizer.ggml.token_type": [3, 3, 1, 1, 1, 1, 1],
        "tokenizer.ggml.merges": ["b c", "a b"],
        "tokenizer.ggml.bos_token_id": 0,
        "tokenizer.ggml.eos_token_id": 1,
        "tokenizer.ggml.add_space_prefix": False,
        "tokenizer.ggml.add_eos_token": True,
    }
    tok = build_gguf_tokenizer(meta, [1])
    assert tok.encode("abc", add_special_tokens=True) == [0, 2, 6, 1]


def test_bad_vocabularies_name_the_field():
    meta = {"tokenizer.ggml.model": "t5", "tokenizer.ggml.tokens": ["a"]}
    with pytest.raises(ValueError, match="tokenizer.ggml.model is 't5'"):
        build_gguf_tokenizer(meta, [])
    meta = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": ["a", "b", "ab"],
        "tokenizer.ggml.scores": [0.0, 0.0],
    }
    with pytest.raises(ValueError, match="tokenizer.ggml.scores"):
        build_gguf_tokenizer(meta, [])


def _gemma3_model(writer, vocab: int) -> dict[str, np.ndarray]:
    """Metadata and random float32 tensors of a six-layer Gemma 3 (llama.cpp's names; the
    5:1 local/global pattern without a metadata key)."""
    hidden, ffn, heads, kv_heads, head_dim, layers = 32, 64, 2, 1, 16, 6
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_sliding_window(8)
    writer.add_rope_freq_base(1_000_000.0)
    writer.add_file_type(0)
    rng = np.random.default_rng(0)

    def rand(*shape, scale=0.1):
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    tensors = {"token_embd.weight": rand(vocab, hidden), "output_norm.weight": rand(hidden) + 1}
    for i in range(layers):
        shapes = {
            "attn_q": (heads * head_dim, hidden),
            "attn_k": (kv_heads * head_dim, hidden),
            "attn_v": (kv_heads * head_dim, hidden),
            "attn_output": (hidden, heads * head_dim),
            "ffn_gate": (ffn, hidden),
            "ffn_up": (ffn, hidden),
            "ffn_down": (hidden, ffn),
        }
        for name, shape in shapes.items():
            tensors[f"blk.{i}.{name}.weight"] = rand(*shape)
        for norm in ("attn_norm", "post_attention_norm", "ffn_norm", "post_ffw_norm"):
            tensors[f"blk.{i}.{norm}.weight"] = rand(hidden) + 1
        for norm in ("attn_q_norm", "attn_k_norm"):
            tensors[f"blk.{i}.{norm}.weight"] = rand(head_dim) + 1
    return tensors


def test_gemma3_gguf_generates_with_its_sentencepiece_vocabulary(tmp_path):
    from pagedllm import LLM, SamplingParams

    path = tmp_path / "tiny-gemma3.gguf"
    write_spm_gguf(path, gemma=True, chat_template=GEMMA_TEMPLATE, arch="gemma3",
                   model=_gemma3_model)  # fmt: skip
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    llm = LLM(model=str(path), dtype="float32", device="cpu", block_size=4, num_gpu_blocks=64,
              max_model_len=128)  # fmt: skip
    tok = llm.tokenizer
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    prompt = "The quick brown fox 🦊 jumps"
    out = llm.generate([prompt], params, use_tqdm=False)[0]
    assert out.prompt_token_ids == hf.encode(prompt)  # BOS + the same pieces
    assert out.prompt_token_ids[0] == tok.bos_token_id
    assert len(out.outputs[0].token_ids) == 12
    assert out.outputs[0].text == tok.decode(out.outputs[0].token_ids)
    messages = [{"role": "user", "content": "Hi there!"}]
    chat = llm.chat(messages, params, use_tqdm=False)[0]
    theirs = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    if isinstance(theirs, dict) or hasattr(theirs, "input_ids"):
        theirs = theirs["input_ids"]
    assert chat.prompt_token_ids == list(theirs)
    assert chat.outputs[0].text == tok.decode(chat.outputs[0].token_ids)
    llm.close()
