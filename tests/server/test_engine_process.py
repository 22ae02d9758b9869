"""``pagedllm serve --engine-process on`` as real processes: the engine core's faults and exits.

A dead core is noticed at once (in-flight streams get an error event and [DONE], /health turns
503, the server exits 1); SIGTERM drains the front end and then stops the core; a SIGKILLed
server leaves no orphan core.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from test_sigterm import _start_server  # tests/server is on sys.path (rootless tests)

pytest.importorskip("zmq")
pytest.importorskip("msgspec")

ENGINE_PROCESS = ("--engine-process", "on")
BODY = {"prompt": "Tell me a story", "max_tokens": 200, "temperature": 0, "ignore_eos": True,
        "stream": True}  # fmt: skip


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _core_pid(server_pid: int) -> int:
    for child in _children(server_pid):
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        if b"multiprocessing.spawn" in cmdline and b"resource_tracker" not in cmdline:
            return child
    raise AssertionError(f"no engine-core child of {server_pid}: {_children(server_pid)}")


def _gone(pid: int, timeout: float) -> bool:
    """True once ``pid`` has exited (a zombie whose parent died counts as exited)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def test_core_death_fails_in_flight_streams_and_exits_1() -> None:
    proc, base = _start_server(extra=ENGINE_PROCESS)
    try:
        core = _core_pid(proc.pid)
        lines: list[str] = []
        with httpx.stream("POST", base + "/v1/completions", json=BODY, timeout=60) as resp:
            for line in resp.iter_lines():
                if not line:
                    continue
                lines.append(line)
                if len(lines) == 2:
                    os.kill(core, signal.SIGKILL)  # mid-stream
        assert lines[-1] == "data: [DONE]"
        error = json.loads(lines[-2][6:])["error"]
        assert "engine core process died" in error["message"]
        try:  # unhealthy until it exits (it may be gone already)
            assert httpx.get(base + "/health", timeout=2).status_code == 503
        except httpx.HTTPError:
            pass
        assert proc.wait(60) == 1
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sigterm_drains_then_stops_the_core() -> None:
    proc, base = _start_server(extra=ENGINE_PROCESS)
    try:
        core = _core_pid(proc.pid)
        # the core loads no web stack (pydantic's compiled core would be mapped)
        assert "pydantic_core" not in Path(f"/proc/{core}/maps").read_text()
        lines: list[str] = []
        body = dict(BODY, max_tokens=24)  # well inside the 20 s grace period on a slow CPU
        with httpx.stream("POST", base + "/v1/completions", json=body, timeout=60) as resp:
            for line in resp.iter_lines():
                if line:
                    lines.append(line)
                if len(lines) == 1:
                    proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        assert _gone(core, 10)
    finally:
        if proc.poll() is None:
            proc.kill()
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert "choices" in chunks[-1], chunks[-1]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_sigkill_of_the_server_leaves_no_orphan() -> None:
    proc, base = _start_server(extra=ENGINE_PROCESS)
    try:
        core = _core_pid(proc.pid)
        with httpx.stream("POST", base + "/v1/completions", json=BODY, timeout=60) as resp:
            next(resp.iter_lines())
            proc.kill()
        proc.wait(10)
        assert _gone(core, 10), "the engine core outlived its server"
    finally:
        if proc.poll() is None:
            proc.kill()
