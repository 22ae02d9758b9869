"""Gemma 2 and Gemma 3 from GGUF files: greedy equal to transformers on the original model.

A tiny random model is written by transformers, then converted to a GGUF file the way
llama.cpp's ``convert_hf_to_gguf.py`` does (its tensor names, RMSNorm weights stored with the
``1 +`` folded in, ``gemma2.*`` / ``gemma3.*`` metadata keys). Two independent checks: transformers
reads that file back (``gguf_file=``) to the original weights, so the file follows the
convention transformers knows; and pagedllm loading the file generates exactly what
transformers generates from the original model, with the windows freeing pages.
"""

from __future__ import annotations

import pytest
import torch
from hybrid_models import hf_greedy, prompts, save_tiny_model

from pagedllm import LLM, SamplingParams
from pagedllm.loader.gguf_tokenizer import _byte_alphabet

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

# HF parameter name (inside model.layers.N.) -> llama.cpp tensor name
_LAYER = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "post_attention_norm",
    "pre_feedforward_layernorm": "ffn_norm",
    "post_feedforward_layernorm": "post_ffw_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def _gguf_name(hf_name: str) -> str | None:
    if hf_name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf_name == "model.norm.weight":
        return "output_norm.weight"
    if hf_name == "lm_head.weight":
        return None  # tied
    _, _, layer, rest = hf_name.split(".", 3)
    stem = rest.rsplit(".", 1)[0]
    return f"blk.{layer}.{_LAYER[stem]}.weight"


def write_gguf(model, arch: str, path) -> None:
    """``model`` as llama.cpp writes it (float32, byte-level tokenizer of 256 tokens)."""
    cfg = model.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_sliding_window(cfg.sliding_window)
    w.add_file_type(0)
    if arch == "gemma2":
        w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
        w.add_float32("gemma2.attn_logit_softcapping", cfg.attn_logit_softcapping)
        w.add_float32("gemma2.final_logit_softcapping", cfg.final_logit_softcapping)
    else:
        w.add_rope_freq_base(cfg.rope_parameters["full_attention"]["rope_theta"])
    alphabet = _byte_alphabet()
    w.add_tokenizer_model("gpt2")
    w.add_token_list([alphabet[b] for b in range(cfg.vocab_size)])
    w.add_token_types([1] * cfg.vocab_size)
    w.add_token_merges([])
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    for name, tensor in model.state_dict().items():
        target = _gguf_name(name)
        if target is None:
            continue
        data = tensor.detach().float().numpy().copy()
        if name.endswith("norm.weight"):
            data = data + 1.0  # convert_hf_to_gguf folds Gemma's "1 +" into the weights
        w.add_tensor(target, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        # llama.cpp scales queries by head_dim ** -0.5: the model must agree to round-trip
        ("gemma2", dict(query_pre_attn_scalar=16)),
        # six layers: llama.cpp's 5:1 local/global pattern without a metadata key
        ("gemma3", dict(num_hidden_layers=6, layer_types=None)),
    ],
)
def test_gemma_gguf_greedy_equals_transformers(tmp_path, name, overrides):
    hf = save_tiny_model(name, tmp_path / "hf", **overrides)
    path = tmp_path / f"{name}.gguf"
    write_gguf(hf, name, path)
    back = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, gguf_file=path.name, torch_dtype=torch.float32
    )
    want_state = hf.state_dict()
    compared = 0
    for key, value in back.state_dict().items():
        if key in want_state and "rotary" not in key:
            torch.testing.assert_close(value, want_state[key], msg=key)
            compared += 1
    assert compared >= 10 * hf.config.num_hidden_layers  # every layer's norms and projections
    ps = prompts([40, 75, 33])
    expected = [hf_greedy(hf, p, 10) for p in ps]
    llm = LLM(model=str(path), dtype="float32", device="cpu", block_size=4, num_gpu_blocks=200,
              max_num_batched_tokens=24, max_model_len=128)  # fmt: skip
    runner = llm.engine.runner
    assert runner.kv_layout.num_groups > 1, "the windows must free pages"
    params = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    got = [o.outputs[0].token_ids for o in llm.generate(ps, params, use_tqdm=False)]
    assert got == expected
    llm.close()
