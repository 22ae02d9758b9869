"""``pagedllm bench throughput --workload long | long-128k`` on a tiny random Qwen3 (CPU)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest

from pagedllm.benchmark import workloads
from pagedllm.benchmark.cli import add_bench_args
from pagedllm.benchmark.long_workload import prepare_long_args, run_long_workload
from pagedllm.config import EngineConfig
from pagedllm.engine.llm_engine import LLMEngine

SPEC = workloads.LongSpec("tiny long", 2, 40, 4, "qwen3-0.6b")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    cfg = json.loads(Path(workloads.preset_path("qwen3-0.6b")).read_text())
    cfg.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, head_dim=32, vocab_size=10240,
               max_position_embeddings=64)  # fmt: skip
    path = tmp_path_factory.mktemp("tiny") / "qwen3.json"
    path.write_text(json.dumps(cfg))
    return str(path)


def _engine(model: str, **extra) -> LLMEngine:
    options = dict(model=model, load_format="dummy", dtype="float32", kv_cache_memory=8 << 20)
    return LLMEngine.from_config(EngineConfig.from_flat(**options, **extra))


@pytest.mark.parametrize("kv_cache_dtype,elem", [("auto", 4), ("fp8", 1)])
def test_long_workload_reports_prefill_decode_and_kv_floor(tiny_model, kv_cache_dtype, elem):
    engine = _engine(tiny_model, kv_cache_dtype=kv_cache_dtype, max_model_len=48)
    result = run_long_workload(engine, SPEC)
    # tiny sizes on a shared CPU: the decode figure (a difference of two timings) may be noise
    assert result["prefill_s"] > 0 and math.isfinite(result["decode_ms_per_step"])
    assert result["prefill_tok_s"] == pytest.approx(2 * 40 / result["prefill_s"])
    per_token = 2 * 2 * 2 * 32 * elem  # K and V, 2 layers, 2 KV heads, head_dim 32
    assert result["kv_read_gb_per_step"] == pytest.approx(2 * (40 + 2) * per_token / 1e9)
    assert engine.scheduler.kv_manager.num_free_blocks == engine.scheduler.kv_manager.num_blocks


def test_long_workload_reports_the_steady_decode_step(tiny_model):
    engine = _engine(tiny_model, max_model_len=64)
    result = run_long_workload(engine, workloads.LongSpec("tiny long", 2, 40, 16, "qwen3-0.6b"))
    # 15 decode steps after the prefill: gaps past the first four give the median
    assert result["decode_step_ms_p50"] is not None and result["decode_step_ms_p50"] > 0
    short = run_long_workload(engine, SPEC)  # too few decode steps for a steady state
    assert short["decode_step_ms_p50"] is None


def test_long_workload_refuses_a_short_context(tiny_model):
    engine = _engine(tiny_model, max_model_len=32)
    with pytest.raises(ValueError, match="max_model_len >= 44"):
        run_long_workload(engine, SPEC)


def test_cli_defaults_for_the_long_workloads():
    parser = argparse.ArgumentParser()
    add_bench_args(parser)
    for name, preset, need in (("long", "qwen3-0.6b", 32_128),
                               ("long-128k", "qwen3-0.6b-128k", 128_128)):  # fmt: skip
        args = parser.parse_args(["throughput", "--workload", name])
        prepare_long_args(args, workloads.LONG_WORKLOADS[name])
        assert (args.preset, args.dummy, args.max_model_len) == (preset, True, need)
    cfg = json.loads(Path(workloads.preset_path("qwen3-0.6b-128k")).read_text())
    assert cfg["max_position_embeddings"] >= 128_128
    # a larger --max-model-len is kept
    args = parser.parse_args(["throughput", "--workload", "long", "--max-model-len", "40000"])
    prepare_long_args(args, workloads.LONG_WORKLOADS["long"])
    assert args.max_model_len == 40000
