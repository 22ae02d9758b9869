"""``pagedllm serve`` as a real process: SIGTERM drains in-flight requests and exits 0."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

SRC = Path(__file__).resolve().parents[2] / "src"


def _start_server(
    shutdown_timeout: float = 20, extra: tuple[str, ...] = ()
) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    env.pop("PAGEDLLM_API_KEY", None)
    cmd = [
        sys.executable,
        "-m",
        "pagedllm.entrypoints.openai.server",
        "--port",
        "0",
        "--device",
        "cpu",
        "--max-model-len",
        "256",
        "--kv-cache-memory",
        str(64 << 20),
        "--log-level",
        "warning",
        "--shutdown-timeout",
        str(shutdown_timeout),
        *extra,
    ]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        match = re.search(r"on (http://\S+)", line)
        if match:
            break
        if time.monotonic() > deadline:
            break
    else:
        proc.wait(5)
        pytest.fail(f"the server exited ({proc.returncode}) before it started")
    # keep draining the pipe so the server never blocks on a full stdout
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    base = match.group(1)
    for _ in range(200):
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    pytest.fail("the server never became healthy")


def test_sigterm_finishes_in_flight_request_and_exits_0() -> None:
    proc, base = _start_server()
    try:
        body = {
            "prompt": "Hello, my name is",
            "max_tokens": 24,
            "temperature": 0,
            "ignore_eos": True,
            "stream": True,
        }
        lines: list[str] = []
        with httpx.stream("POST", base + "/v1/completions", json=body, timeout=60) as resp:
            for line in resp.iter_lines():
                if not line:
                    continue
                lines.append(line)
                if len(lines) == 1:
                    proc.send_signal(signal.SIGTERM)  # mid-stream
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert sum(1 for c in chunks if c["choices"][0]["text"]) >= 20  # it really finished
    with pytest.raises(httpx.HTTPError):
        httpx.get(base + "/health", timeout=2)


def test_sigterm_past_the_shutdown_timeout_answers_every_request() -> None:
    """Requests still running when the grace period ends get an error, not a cut connection:
    a stream an error event and [DONE], a non-streaming request a JSON error body."""
    proc, base = _start_server(shutdown_timeout=1)
    body = {"prompt": "Tell me a story", "max_tokens": 240, "temperature": 0, "ignore_eos": True}
    plain: dict = {}

    def non_streaming() -> None:
        resp = httpx.post(base + "/v1/completions", json=body, timeout=60)
        plain["status"], plain["json"] = resp.status_code, resp.json()

    worker = threading.Thread(target=non_streaming)
    try:
        worker.start()
        lines: list[str] = []
        stream_body = {**body, "stream": True}
        with httpx.stream("POST", base + "/v1/completions", json=stream_body, timeout=60) as resp:
            for line in resp.iter_lines():
                if line:
                    lines.append(line)
                if len(lines) == 1:
                    proc.send_signal(signal.SIGTERM)
        worker.join(60)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert lines[-1] == "data: [DONE]"
    error = json.loads(lines[-2][6:])["error"]
    assert error["code"] == 503 and "shut down" in error["message"]
    assert plain["status"] == 503 and "shut down" in plain["json"]["error"]["message"]
