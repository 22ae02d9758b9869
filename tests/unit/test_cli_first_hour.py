"""The first hour of a new user at the command line: --version, help with defaults, the model
given the same way everywhere, sizes with units, the start-up summary, chat trimming and Ctrl-C
(through a real pseudo-terminal)."""

from __future__ import annotations

import os
import pty
import re
import select
import sys
import time

import pytest
from test_cli import SRC, _need_bundled_model, run_cli

from pagedllm.entrypoints.cli import build_parser


def _all_parsers(parser, path=()):
    yield path, parser
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield from _all_parsers(sub, (*path, name))


def test_version_and_top_help():
    proc = run_cli("--version", timeout=120)
    assert proc.returncode == 0 and re.fullmatch(r"pagedllm \d+\.\d+\.\d+\n", proc.stdout)
    top = run_cli("--help", timeout=120).stdout
    assert "pagedllm: LLM inference and serving on a paged KV cache" in top
    assert "``" not in top  # no raw docstring markup
    gen = run_cli("generate", "--help", timeout=120).stdout
    assert "(default: 256)" in gen and "--threads" in gen and "--model" in gen


def test_every_flag_has_help():
    missing = [
        (" ".join(path), action.dest)
        for path, parser in _all_parsers(build_parser())
        for action in parser._actions
        if not action.help and action.dest not in ("help", "command", "bench")
    ]
    assert missing == []


def test_serve_accepts_model_as_option_and_positional():
    proc = run_cli("serve", "--model", "/no/such/model", "--port", "0", timeout=120)
    assert proc.returncode != 0 and "does not exist" in proc.stdout + proc.stderr
    assert "unrecognized arguments" not in proc.stderr
    both = run_cli("serve", "/a", "--model", "/b", timeout=120)
    assert both.returncode != 0 and "two models" in both.stdout + both.stderr


def test_generate_with_model_first_units_threads_and_summary():
    _need_bundled_model()
    from pagedllm.loader.bundled import bundled_model_path

    model = str(bundled_model_path())
    proc = run_cli(
        "generate", model, "The capital of France is", "--max-tokens", "4",
        "--kv-cache-memory", "32MiB", "--dtype", "float32", "--threads", "1",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()  # the completion (stdout holds only the answer)
    err = proc.stderr
    assert "(LlamaForCausalLM)" in err and "device: cpu, dtype: float32" in err
    pages, size, tokens, mib = re.search(
        r"KV cache: (\d+) pages x (\d+) tokens = ([\d,]+) tokens \(([\d.]+) MiB\)", err
    ).groups()
    assert int(pages) * int(size) == int(tokens.replace(",", "")) and size == "16"
    assert 31 < float(mib) <= 32  # whole pages of the 32 MiB asked for
    conc = float(re.search(r"maximum concurrency at max_model_len=4096: ([\d.]+)x", err)[1])
    assert conc == pytest.approx(int(tokens.replace(",", "")) / 4096, abs=0.01)
    assert "prefix caching: on" in err and re.search(r"ready in [\d.]+ s", err)


def test_chat_trims_old_turns_to_fit():
    _need_bundled_model()
    long_line = "Tell me about the history of paged memory in operating systems, please. " * 3
    turns = "\n".join([long_line] * 4) + "\n/exit\n"
    proc = run_cli(
        "chat", "--max-model-len", "200", "--max-tokens", "12", "--ignore-eos",
        "--kv-cache-memory", "32MiB", "--dtype", "float32", stdin=turns,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "oldest messages to fit max_model_len=200" in proc.stderr
    assert "error" not in proc.stderr
    assert proc.stdout.count("> ") == 5  # four answered turns, then /exit


def _read_until(fd: int, pattern: bytes, seen: bytearray, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while pattern not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                return False
            if not chunk:
                return False
            seen.extend(chunk)
    return True


def test_chat_ctrl_c_stops_the_answer_and_returns_to_the_prompt():
    _need_bundled_model()
    env = dict(os.environ, PYTHONPATH=str(SRC), TOKENIZERS_PARALLELISM="false")
    argv = [
        sys.executable, "-m", "pagedllm.entrypoints.cli", "chat", "--max-tokens", "1000",
        "--ignore-eos", "--kv-cache-memory", "128MiB", "--dtype", "float32",
    ]  # fmt: skip
    pid, fd = pty.fork()
    if pid == 0:  # the child: a session leader whose controlling terminal is the pty
        os.execvpe(sys.executable, argv, env)
    seen = bytearray()
    try:
        assert _read_until(fd, b"> ", seen, 300), seen.decode(errors="replace")
        os.write(fd, b"Tell me a very long story about a dragon.\r")
        assert _read_until(fd, b"dragon.\r\n", seen, 30)  # the terminal's echo
        start = len(seen)
        # wait for a few streamed characters of the answer, then press Ctrl-C
        deadline = time.monotonic() + 120
        while len(seen) - start < 40 and time.monotonic() < deadline:
            _read_until(fd, b"\x00never", seen, 0.5)
        assert len(seen) - start >= 40, seen.decode(errors="replace")
        os.write(fd, b"\x03")
        assert _read_until(fd, b"(stopped)", seen, 60), seen[-300:].decode(errors="replace")
        # back at the prompt, the session alive (the prompt may have come in the same read)
        tail = bytearray(seen[seen.rfind(b"(stopped)") + len(b"(stopped)") :])
        assert _read_until(fd, b"> ", tail, 60), tail.decode(errors="replace")
        os.write(fd, b"/exit\r")
        _read_until(fd, b"\x00never", tail, 2)
        _, status = os.waitpid(pid, 0)
        pid = 0
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        assert b"Traceback" not in seen + tail
    finally:
        if pid:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        os.close(fd)
