"""Units behind the first-hour features: size parsing, model alias, context overflow, history
trimming, stats and request logs, the load progress bar, and the KV page snapshot."""

from __future__ import annotations

import argparse
import io
import logging

import pytest

from pagedllm.core.request import RequestStatus
from pagedllm.engine.kv_snapshot import CACHED, FREE, OWNED, SHARED, take_kv_snapshot
from pagedllm.engine.validation import ContextLengthError, resolve_max_tokens
from pagedllm.entrypoints.chat import trim_history
from pagedllm.entrypoints.engine_args import (
    add_engine_args,
    engine_config_from_args,
    parse_size,
    resolve_model,
)
from pagedllm.entrypoints.stats_logger import RequestLogger, StatsLogger
from pagedllm.progress import with_load_progress
from test_core_fakes import FakeRunner, make_request, make_scheduler


# ----------------------------------------------------------------- sizes and model
@pytest.mark.parametrize(
    ("text", "unit", "want"),
    [
        ("2GiB", "b", 2 << 30),
        ("512MB", "b", 512_000_000),
        ("512mib", "b", 512 << 20),
        ("1.5 GiB", "b", 3 << 29),
        ("1073741824", "b", 1 << 30),
        ("4", "gib", 4 << 30),  # --swap-space: GiB without a unit, like vLLM
        ("0.5", "gib", 1 << 29),
        ("64MiB", "gib", 64 << 20),
    ],
)
def test_parse_size(text, unit, want):
    assert parse_size(text, unit) == want


@pytest.mark.parametrize("text", ["", "lots", "2 GiBs", "-1GiB", "1e9"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError, match="size|unit"):
        parse_size(text)


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_engine_args(parser)
    return parser.parse_args(list(argv))


def test_engine_flags_take_units_and_the_model_either_way():
    args = _parse("m.gguf", "--kv-cache-memory", "2GiB", "--swap-space", "1")
    config = engine_config_from_args(args)
    assert config.model.model == "m.gguf"
    assert config.cache.kv_cache_memory == 2 << 30
    assert config.cache.swap_space == 1 << 30
    assert engine_config_from_args(_parse("--model", "m.gguf")).model.model == "m.gguf"
    assert resolve_model(_parse("--model", "a", "a")) == "a"
    with pytest.raises(ValueError, match="two models"):
        resolve_model(_parse("--model", "a", "b"))
    with pytest.raises(SystemExit):
        _parse("--kv-cache-memory", "lots")


def test_threads_flag_sets_torch_threads():
    import torch

    before = torch.get_num_threads()
    try:
        engine_config_from_args(_parse("--threads", "1"))
        assert torch.get_num_threads() == 1
        with pytest.raises(ValueError, match="threads"):
            engine_config_from_args(_parse("--threads", "0"))
    finally:
        torch.set_num_threads(before)


def test_truncate_flag_reaches_the_config():
    assert engine_config_from_args(_parse()).scheduler.truncate_max_tokens is False
    assert engine_config_from_args(_parse("--truncate-max-tokens")).scheduler.truncate_max_tokens


# ----------------------------------------------------------------- context overflow
def test_resolve_max_tokens():
    assert resolve_max_tokens(10, 6, 16) == 6
    assert resolve_max_tokens(10, None, 16) == 6  # None: up to the context
    with pytest.raises(ContextLengthError, match="maximum context length is 16 tokens") as info:
        resolve_max_tokens(10, 7, 16)
    assert "requested 17 tokens" in str(info.value)
    assert info.value.code == "context_length_exceeded"
    assert isinstance(info.value, ValueError)
    assert resolve_max_tokens(10, 7, 16, truncate=True) == 6  # the opt-in old behaviour
    with pytest.raises(ContextLengthError, match="prompt has 16 tokens"):
        resolve_max_tokens(16, 1, 16, truncate=True)


# ----------------------------------------------------------------- chat history
def _msgs(*roles_and_sizes: tuple[str, int]) -> list[dict[str, str]]:
    return [{"role": r, "content": "x" * n} for r, n in roles_and_sizes]


def _count(messages):
    return sum(len(m["content"]) for m in messages)


def test_trim_history_drops_oldest_turns_and_keeps_the_system_prompt():
    history = _msgs(
        ("system", 5),
        ("user", 10),
        ("assistant", 10),
        ("user", 10),
        ("assistant", 10),
        ("user", 10),
    )
    kept, dropped = trim_history(history, _count, budget=36)
    assert dropped == 2  # one whole user+assistant turn
    assert kept[0]["role"] == "system" and kept[1:] == history[3:]
    kept, dropped = trim_history(history, _count, budget=15)
    assert dropped == 4 and kept == [history[0], history[-1]]
    assert trim_history(history, _count, budget=100) == (history, 0)
    with pytest.raises(ValueError, match="max_tokens"):
        trim_history(history, _count, budget=14)


# ----------------------------------------------------------------- logs and progress
class _Stats:
    def __init__(self, **kw):
        base = dict(
            num_running=0,
            num_waiting=0,
            num_swapped=0,
            kv_usage=0.0,
            kv_blocks_used=0,
            kv_blocks_total=100,
            prompt_tokens_total=0,
            generation_tokens_total=0,
            prefix_cache_queries=0,
            prefix_cache_hits=0,
        )
        base.update(kw)
        self.__dict__.update(base)


def test_stats_logger_reports_rates_and_stays_quiet_when_idle(caplog):
    now = [0.0]
    log = StatsLogger(interval=5.0, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="pagedllm.stats")
    assert log(_Stats()) is None
    now[0] = 2.0
    assert log(_Stats(num_running=3, generation_tokens_total=50)) is None  # not due yet
    now[0] = 10.0
    line = log(
        _Stats(
            num_running=3,
            num_waiting=2,
            generation_tokens_total=200,
            prompt_tokens_total=1000,
            kv_usage=0.25,
            kv_blocks_used=25,
            prefix_cache_queries=400,
            prefix_cache_hits=100,
        )
    )
    assert "prompt 100.0 tok/s" in line and "generation 20.0 tok/s" in line
    assert "running 3, waiting 2" in line and "KV usage 25.0% (25/100 pages)" in line
    assert "prefix cache hit rate 25.0%" in line
    assert line in caplog.text
    now[0] = 20.0  # idle and nothing new: no line
    assert log(_Stats(generation_tokens_total=200, prompt_tokens_total=1000)) is None


def test_request_logger_hides_the_prompt_unless_asked():
    from pagedllm import SamplingParams
    from pagedllm.engine.outputs import CompletionOutput, RequestOutput

    params = SamplingParams(max_tokens=7)
    quiet = RequestLogger().received("r1", "secret words", None, params)
    assert "secret" not in quiet and "12 prompt chars" in quiet and "max_tokens=7" in quiet
    loud = RequestLogger(log_prompts=True).received("r1", "secret words", None, params)
    assert "secret words" in loud
    out = RequestOutput(
        "r1", None, [1, 2, 3], [CompletionOutput(0, "ab", [4, 5], finish_reason="length")], True
    )
    done = RequestLogger().finished(out, 0.25, 1.5)
    assert "3 prompt tokens" in done and "2 output tokens" in done and "TTFT 250 ms" in done


def test_load_progress_bar_counts_tensors():
    out = io.StringIO()
    items = list(with_load_progress(iter(range(5)), 5, "tiny", file=out, enabled=True))
    assert items == [0, 1, 2, 3, 4]
    assert "Loading tiny" in out.getvalue() and "5/5" in out.getvalue()
    silent = io.StringIO()  # not a terminal: no bar by default
    assert list(with_load_progress(iter(range(3)), 3, "tiny", file=silent)) == [0, 1, 2]
    assert silent.getvalue() == ""


# ----------------------------------------------------------------- KV snapshot
def test_kv_snapshot_follows_the_pool():
    sched = make_scheduler(num_blocks=16, block_size=4)
    runner = FakeRunner(4)
    prefix = [11, 12, 13, 14, 15, 16, 17, 18]
    sched.add_request(make_request("a#0.0", prefix + [1, 2], max_tokens=6))
    for _ in range(2):  # a's prompt is cached before b arrives: b hits it
        out = sched.schedule()
        sched.update_from_output(out, runner.execute(out, sched))
    sched.add_request(make_request("b#1.0", prefix + [3], max_tokens=6))
    out = sched.schedule()
    sched.update_from_output(out, runner.execute(out, sched))
    snap = take_kv_snapshot(sched)
    assert sum(snap["counts"].values()) == snap["num_pages"] == 16
    assert [r["id"] for r in snap["requests"]] == ["a", "b"]
    assert snap["counts"]["shared"] == 2  # the two full prefix pages
    assert all(r["shared_pages"] == 2 for r in snap["requests"])
    cells = snap["cells"]
    assert cells.count(SHARED) == 2 and cells.count(OWNED) >= 1 and cells.count(OWNED + 1) >= 1
    assert snap["counts"]["owned"] == cells.count(OWNED) + cells.count(OWNED + 1)
    sched.finish_requests(["a#0.0", "b#1.0"], RequestStatus.FINISHED_ABORTED)
    idle = take_kv_snapshot(sched)
    assert idle["requests"] == [] and idle["counts"]["owned"] == idle["counts"]["shared"] == 0
    assert idle["counts"]["cached"] >= 2 and set(idle["cells"]) <= {FREE, CACHED}
    small = take_kv_snapshot(sched, max_cells=5)
    assert small["pages_per_cell"] == 4 and len(small["cells"]) == 4


def test_loading_a_checkpoint_shows_a_bar_over_every_tensor(tmp_path, monkeypatch):
    import json

    from safetensors.torch import save_file

    from pagedllm.loader import load_model_source
    from pagedllm.loader.dummy import iter_dummy_weights

    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 32,
        "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 128, "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "torch_dtype": "float32",
    }  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    tensors = {name: t.contiguous() for name, t in iter_dummy_weights(config)}
    save_file(tensors, str(tmp_path / "model.safetensors"))

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    err = Terminal()
    monkeypatch.setattr("sys.stderr", err)
    source = load_model_source(str(tmp_path))
    names = [name for name, _ in source.weights()]
    assert source.num_tensors == len(names) == len(tensors)
    assert f"Loading {tmp_path.name}" in err.getvalue()
    assert f"{len(names)}/{len(names)}" in err.getvalue()
