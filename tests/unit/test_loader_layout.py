"""Per-layer sliding windows from HF configs, and inconsistent configs rejected at load."""

from __future__ import annotations

import json

import pytest

from pagedllm.loader import load_model_source
from pagedllm.loader.attention_layout import layer_windows


def _cfg(arch: str, **extra) -> dict:
    return {"architectures": [arch], "num_hidden_layers": 6, **extra}


def test_windows_per_architecture():
    assert layer_windows(_cfg("Gemma2ForCausalLM", sliding_window=64)) == [64, None] * 3
    gemma3 = _cfg("Gemma3ForCausalLM", sliding_window=32, sliding_window_pattern=3)
    assert layer_windows(gemma3) == [32, 32, None, 32, 32, None]
    # Gemma 3's default pattern is 6: five local layers per global one
    assert layer_windows(_cfg("Gemma3ForCausalLM", sliding_window=8)) == [8] * 5 + [None]
    types = ["full_attention", "sliding_attention"] * 3
    assert layer_windows(_cfg("Gemma3ForCausalLM", sliding_window=8, layer_types=types)) == [
        None, 8, None, 8, None, 8
    ]  # fmt: skip
    assert layer_windows(_cfg("MistralForCausalLM", sliding_window=16)) == [16] * 6
    assert layer_windows(_cfg("MistralForCausalLM", sliding_window=None)) == [None] * 6
    qwen2 = _cfg("Qwen2ForCausalLM", sliding_window=16, use_sliding_window=True)
    assert layer_windows({**qwen2, "max_window_layers": 4}) == [None] * 4 + [16, 16]
    assert layer_windows({**qwen2, "use_sliding_window": False}) == [None] * 6
    assert layer_windows(_cfg("LlamaForCausalLM")) == [None] * 6


@pytest.mark.parametrize(
    "extra,field",
    [
        ({"sliding_window": 0}, "sliding_window"),
        ({"sliding_window": -4}, "sliding_window"),
        ({"sliding_window": 8, "sliding_window_pattern": 7}, "sliding_window_pattern"),
        ({"sliding_window": 8, "sliding_window_pattern": 0}, "sliding_window_pattern"),
        ({"sliding_window": 8, "layer_types": ["sliding_attention"] * 7}, "layer_types"),
        ({"sliding_window": 8, "layer_types": ["local"] * 6}, "layer_types"),
    ],
)
def test_inconsistent_configs_fail_at_load_naming_the_field(tmp_path, extra, field):
    cfg = {
        "architectures": ["Gemma3ForCausalLM"],
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 6,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "vocab_size": 64,
        **extra,
    }
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=field):
        load_model_source(str(tmp_path))
