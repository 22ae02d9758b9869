"""Our models through the paged cache against Hugging Face transformers on tiny random weights."""

from __future__ import annotations

import pytest
import torch
import transformers

from pagedllm.attention.metadata import ForwardContext, build_metadata, set_forward_context
from pagedllm.attention.torch_backend import TorchAttentionBackend
from pagedllm.models.llama import ModelArgs
from pagedllm.models.registry import build_model

BLOCK_SIZE = 4
NUM_BLOCKS = 64

COMMON = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=256,
    max_position_embeddings=128,
    rms_norm_eps=1e-5,
)

CONFIGS = {
    "llama3": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(
            rope_parameters=dict(
                rope_type="llama3",
                rope_theta=500000.0,
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=16,
            )
        ),
    ),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(rope_theta=1000000.0)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=32)),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=None, head_dim=16)),
    "mistral_window": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=6, head_dim=16)),
}


def make_pair(name: str, tie: bool = False, with_lm_head: bool = True):
    """A random-weight HF model and our model loaded from its state dict."""
    config_cls, arch, extra = CONFIGS[name]
    torch.manual_seed(0)
    config = getattr(transformers, config_cls)(
        **COMMON, **extra, tie_word_embeddings=tie, attn_implementation="eager"
    )
    hf = getattr(transformers, arch)(config).eval()
    with torch.no_grad():  # larger weights than HF's init so logits differ visibly
        for pname, p in hf.named_parameters():
            if "norm" in pname:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))
    hf_config = config.to_dict()
    hf_config["architectures"] = [arch]
    model = build_model(hf_config, torch.float32, "cpu")
    state = hf.state_dict()
    if not with_lm_head:
        state.pop("lm_head.weight", None)
    model.load_weights(state.items())
    return hf, model


def hf_logits(hf, tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf(torch.tensor([tokens])).logits[0].float()


class PagedRunner:
    """A minimal model runner: per-sequence block tables over one KV pool."""

    def __init__(self, model, seed: int = 0) -> None:
        self.model = model
        self.kv_caches = [
            torch.zeros(2, NUM_BLOCKS, BLOCK_SIZE, model.num_kv_heads, model.head_dim)
            for _ in range(model.num_layers)
        ]
        gen = torch.Generator().manual_seed(seed)
        self.free = torch.randperm(NUM_BLOCKS, generator=gen).tolist()
        self.tables: dict[str, list[int]] = {}

    def step(self, batch: list[tuple[str, list[int], int]]) -> list[torch.Tensor]:
        """``batch``: (seq id, new tokens, start position), decodes first -> logits per seq."""
        input_ids, positions, query_lens, seq_lens, tables = [], [], [], [], []
        for seq_id, tokens, start in batch:
            table = self.tables.setdefault(seq_id, [])
            while len(table) * BLOCK_SIZE < start + len(tokens):
                table.append(self.free.pop())
            input_ids += tokens
            positions += range(start, start + len(tokens))
            query_lens.append(len(tokens))
            seq_lens.append(start + len(tokens))
            tables.append(table)
        metadata = build_metadata(query_lens, seq_lens, tables, BLOCK_SIZE)
        ctx = ForwardContext(metadata, self.kv_caches, TorchAttentionBackend())
        with torch.no_grad(), set_forward_context(ctx):
            hidden = self.model(torch.tensor(input_ids), torch.tensor(positions))
            logits = self.model.compute_logits(hidden)
        assert logits.dtype == torch.float32
        return list(logits.split(query_lens))


def tokens(n: int, seed: int) -> list[int]:
    return torch.randint(
        0, COMMON["vocab_size"], (n,), generator=torch.Generator().manual_seed(seed)
    ).tolist()


ATOL = dict(atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_prefill_matches_hf(name: str) -> None:
    hf, model = make_pair(name)
    prompt = tokens(20, seed=1)
    (logits,) = PagedRunner(model).step([("a", prompt, 0)])
    expected = hf_logits(hf, prompt)
    assert expected.std() > 0.1  # a meaningful comparison, not near-zero logits
    torch.testing.assert_close(logits, expected, **ATOL)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_prefill_then_decode_matches_hf(name: str) -> None:
    hf, model = make_pair(name)
    seq = tokens(20, seed=2)
    expected = hf_logits(hf, seq)
    runner = PagedRunner(model, seed=3)
    (logits,) = runner.step([("a", seq[:12], 0)])
    torch.testing.assert_close(logits, expected[:12], **ATOL)
    for pos in range(12, 20):
        (logits,) = runner.step([("a", [seq[pos]], pos)])
        torch.testing.assert_close(logits[0], expected[pos], **ATOL)


@pytest.mark.parametrize("name", ["llama3", "qwen3", "mistral_window"])
def test_mixed_batch_matches_hf(name: str) -> None:
    hf, model = make_pair(name)
    a, b, c = tokens(11, seed=4), tokens(13, seed=5), tokens(9, seed=6)
    runner = PagedRunner(model, seed=7)
    runner.step([("a", a[:10], 0), ("b", b[:6], 0)])  # two prefills in one batch
    # decode for a, a chunk over b's cached prefix, a fresh prompt c: one flat batch
    out_a, out_b, out_c = runner.step([("a", a[10:], 10), ("b", b[6:], 6), ("c", c, 0)])
    torch.testing.assert_close(out_a[0], hf_logits(hf, a)[10], **ATOL)
    torch.testing.assert_close(out_b, hf_logits(hf, b)[6:], **ATOL)
    torch.testing.assert_close(out_c, hf_logits(hf, c), **ATOL)


@pytest.mark.parametrize("with_lm_head", [True, False])
def test_tied_embeddings(with_lm_head: bool) -> None:
    hf, model = make_pair("llama3", tie=True, with_lm_head=with_lm_head)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    prompt = tokens(8, seed=8)
    (logits,) = PagedRunner(model).step([("a", prompt, 0)])
    torch.testing.assert_close(logits, hf_logits(hf, prompt), **ATOL)


def test_untied_lm_head_is_separate_and_required() -> None:
    hf, model = make_pair("qwen2", tie=False)
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    torch.testing.assert_close(model.lm_head.weight, hf.lm_head.weight)
    state = hf.state_dict()
    state.pop("lm_head.weight")
    with pytest.raises(ValueError, match="lm_head.weight"):
        model.load_weights(state.items())


def test_load_weights_rejects_unknown_and_missing() -> None:
    hf, model = make_pair("qwen3")
    state = dict(hf.state_dict())
    with pytest.raises(ValueError, match="bogus"):
        model.load_weights([*state.items(), ("model.bogus.weight", torch.zeros(1))])
    state.pop("model.layers.1.self_attn.k_proj.weight")
    with pytest.raises(ValueError, match=r"layers\.1\.self_attn\.qkv_proj\.weight#1"):
        model.load_weights(state.items())
    # rotary buffers of older checkpoints are ignored
    model.load_weights(
        [*hf.state_dict().items(), ("model.layers.0.self_attn.rotary_emb.inv_freq", torch.zeros(8))]
    )


def test_qwen2_has_qkv_bias_only() -> None:
    _, model = make_pair("qwen2")
    attn = model.model.layers[0].self_attn
    assert attn.qkv_proj.bias is not None and attn.o_proj.bias is None


def test_profiling_pass_without_metadata() -> None:
    hf, model = make_pair("qwen3")
    prompt = tokens(10, seed=9)
    ctx = ForwardContext(None, [], TorchAttentionBackend())
    with torch.no_grad(), set_forward_context(ctx):
        hidden = model(torch.tensor(prompt), torch.arange(10))
    torch.testing.assert_close(model.compute_logits(hidden), hf_logits(hf, prompt), **ATOL)


def test_model_attributes_and_unsupported_arch() -> None:
    _, model = make_pair("qwen3")
    assert (model.num_layers, model.num_heads, model.num_kv_heads, model.head_dim) == (2, 4, 2, 32)
    with pytest.raises(ValueError, match="Qwen3ForCausalLM"):
        build_model({"architectures": ["GPT2LMHeadModel"]}, torch.float32, "cpu")


def test_config_reading_v4_and_v5_rope_keys() -> None:
    base = dict(COMMON, architectures=["LlamaForCausalLM"])
    v4 = ModelArgs.from_hf_config(
        dict(base, rope_theta=5e5, rope_scaling={"type": "linear", "factor": 2.0})
    )
    v5 = ModelArgs.from_hf_config(
        dict(base, rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 5e5})
    )
    assert v4.rope_theta == v5.rope_theta == 5e5
    assert v4.rope_scaling["factor"] == v5.rope_scaling["factor"] == 2.0
    default = ModelArgs.from_hf_config(base)
    assert default.rope_theta == 10000.0 and default.head_dim == 16 and default.rope_scaling is None
