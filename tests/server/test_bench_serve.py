"""``pagedllm bench serve`` and ``bench throughput`` run from a README install and show progress.

``bench serve`` runs in-process against the session's real server; ``bench throughput`` on a
tiny dummy-weight model. stderr is a pretend terminal, so the progress bars are drawn."""

from __future__ import annotations

import io
import json

from pagedllm.entrypoints.cli import main

# a tiny Qwen3 shape for dummy weights (also used by test_core_client.py)
TINY_QWEN3 = {
    "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 10240,
    "max_position_embeddings": 4096, "rope_theta": 10000, "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2,
}  # fmt: skip


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bench_serve_reports_a_table_and_shows_progress(
    server, idle, monkeypatch, capsys, tmp_path
):
    err = _Terminal()
    monkeypatch.setattr("sys.stderr", err)
    out_file = tmp_path / "bench.json"
    code = main(
        ["bench", "serve", "--base-url", server.base_url, "--api-key", server.api_key,
         "--concurrency", "2", "--num-prompts", "3", "--max-tokens", "4", "--input-len", "4,8",
         "--out", str(out_file)]
    )  # fmt: skip
    assert code == 0
    assert "concurrency 2" in err.getvalue() and "3/3" in err.getvalue()
    assert "ttft p50" in capsys.readouterr().out
    assert out_file.read_text().strip()
    idle()


def test_bench_throughput_shows_progress(monkeypatch, capsys, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY_QWEN3))
    err = _Terminal()
    monkeypatch.setattr("sys.stderr", err)
    code = main(
        ["bench", "throughput", str(tmp_path), "--load-format", "dummy", "--workload", "w1",
         "--num-prompts", "3", "--dtype", "float32", "--kv-cache-memory", "64MiB"]
    )  # fmt: skip
    assert code == 0
    assert "3/3" in err.getvalue() and "output_tokens" in err.getvalue()
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1])["runs"][0]["num_requests"] == 3


def test_bench_serve_launches_the_server_and_runs_the_workload_offline(tmp_path, capsys):
    """--model-path: a server with the engine core in its own process and two front ends,
    token-id prompts from two client processes, then the same workload offline, in one call."""
    (tmp_path / "config.json").write_text(json.dumps(TINY_QWEN3))
    out_file = tmp_path / "bench.json"
    code = main(
        ["bench", "serve", "--model-path", str(tmp_path), "--dummy",
         "--serve-args", "--device cpu --dtype float32 --kv-cache-memory 64MiB",
         "--engine-modes", "on", "--api-server-counts", "2", "--concurrency", "2",
         "--num-prompts", "4",
         "--prompt-ids", "5,20", "--max-tokens", "4", "--client-procs", "2",
         "--out", str(out_file)]
    )  # fmt: skip
    assert code == 0
    result = json.loads(out_file.read_text())
    (row,) = result["results"]
    assert row["engine_process"] == "on" and row["client_procs"] == 2
    assert row["api_server_count"] == 2
    assert row["completed"] == 4 and row["output_tokens"] == 16
    assert result["broken_streams"] == 0
    assert result["offline"]["requests"] == 4 and result["offline"]["output_tok_s"] > 0
    assert row["offline_ratio"] > 0 and "ttft p50" in capsys.readouterr().out


def test_bench_serve_sweeps_engine_modes_and_front_end_counts() -> None:
    import pytest

    from pagedllm.entrypoints.openai.bench_launch import server_variants

    assert server_variants("on", "1,4") == [("on", 1), ("on", 4)]
    assert server_variants("on,off", "1") == [("on", 1), ("off", 1)]
    with pytest.raises(ValueError, match="need the engine mode on"):
        server_variants("on,off", "1,2")
