"""``pagedllm serve --api-server-count 2`` as real processes: two front ends on one port over one
engine core; SIGTERM drains both and exits 0; a dead core makes the server exit 1; a SIGKILLed
supervisor leaves no orphan (core or front end)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from test_engine_process import BODY, _children, _gone  # tests/server is on sys.path
from test_sigterm import SRC, _start_server

pytest.importorskip("zmq")
pytest.importorskip("msgspec")

TWO = ("--api-server-count", "2")


def _roles(supervisor: int) -> tuple[int, list[int]]:
    """(core pid, front-end pids) among the supervisor's spawned children: the front ends are
    the ones with the web stack (pydantic's compiled core) mapped."""
    core, fronts = None, []
    for child in _children(supervisor):
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        if b"multiprocessing.spawn" not in cmdline or b"resource_tracker" in cmdline:
            continue
        if "pydantic_core" in Path(f"/proc/{child}/maps").read_text():
            fronts.append(child)
        else:
            core = child
    assert core is not None and len(fronts) == 2, (core, fronts)
    return core, fronts


def _stream(base: str, body: dict, out: list, on_first=None) -> None:
    lines = []
    with httpx.stream("POST", base + "/v1/completions", json=body, timeout=120) as resp:
        for line in resp.iter_lines():
            if line:
                lines.append(line)
                if len(lines) == 1 and on_first is not None:
                    on_first()
    out.append(lines)


def _e2e_counts(base: str) -> dict[str, float]:
    """front_end label -> requests it finished, over fresh connections (the kernel spreads
    them, so every front end answers some of the scrapes)."""
    seen: dict[str, float] = {}
    for _ in range(40):
        text = httpx.get(base + "/metrics", timeout=10).text
        for line in text.splitlines():
            if line.startswith("pagedllm:e2e_request_latency_seconds_count{"):
                label = line.split('front_end="', 1)[1].split('"', 1)[0]
                seen[label] = float(line.rsplit(" ", 1)[1])
        if len(seen) == 2:
            break
    return seen


def test_two_front_ends_share_the_port_then_sigterm_drains_and_exits_0() -> None:
    proc, base = _start_server(extra=TWO)
    try:
        core, fronts = _roles(proc.pid)
        # concurrent streams over fresh connections: the kernel spreads them over both front
        # ends, and the core sends each request's batches to the front end that added it
        results: list = []
        body = dict(BODY, max_tokens=8)
        workers = [threading.Thread(target=_stream, args=(base, body, results)) for _ in range(8)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(120)
        assert len(results) == 8
        for lines in results:
            assert lines[-1] == "data: [DONE]"
            chunks = [json.loads(line[6:]) for line in lines[:-1]]
            assert chunks[-1]["choices"][0]["finish_reason"] == "length", chunks[-1]
            assert sum(1 for c in chunks if c["choices"][0]["text"]) >= 6
        counts = _e2e_counts(base)
        assert set(counts) == {"0", "1"}, counts  # both processes answer on the one port
        assert sum(counts.values()) >= 8 and all(v > 0 for v in counts.values()), counts
        # SIGTERM mid-stream: the stream finishes, both front ends and the core exit, status 0
        drained: list = []
        _stream(base, dict(BODY, max_tokens=24), drained, lambda: proc.send_signal(signal.SIGTERM))
        assert proc.wait(60) == 0
        assert all(_gone(pid, 10) for pid in (core, *fronts))
    finally:
        if proc.poll() is None:
            proc.kill()
    chunks = [json.loads(line[6:]) for line in drained[0][:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_core_death_makes_the_server_exit_1() -> None:
    proc, base = _start_server(extra=TWO)
    try:
        core, fronts = _roles(proc.pid)
        results: list = []
        _stream(base, dict(BODY, max_tokens=200), results, lambda: os.kill(core, signal.SIGKILL))
        error = json.loads(results[0][-2][6:])["error"]
        assert "engine core process died" in error["message"]
        assert proc.wait(60) == 1
        assert all(_gone(pid, 10) for pid in fronts)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sigkill_of_the_supervisor_leaves_no_orphan() -> None:
    proc, base = _start_server(extra=TWO)
    try:
        core, fronts = _roles(proc.pid)
        with httpx.stream("POST", base + "/v1/completions", json=BODY, timeout=60) as resp:
            next(resp.iter_lines())
            proc.kill()
        proc.wait(10)
        for pid in (core, *fronts):
            assert _gone(pid, 10), f"process {pid} outlived the SIGKILLed server"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_several_front_ends_refuse_engine_process_off() -> None:
    env = dict(os.environ, PYTHONPATH=str(SRC))
    cmd = [sys.executable, "-m", "pagedllm.entrypoints.openai.server", "--device", "cpu",
           "--api-server-count", "2", "--engine-process", "off"]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "api_server_count=2 needs the engine core in its own process" in done.stderr
