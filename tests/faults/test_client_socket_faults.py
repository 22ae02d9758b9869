"""Client sockets that fail (reset mid-stream, or before any answer) under concurrent load.

A real server (bundled model, float32, greedy) serves concurrent streams; some clients' sockets
are reset (RST) after a chosen number of chunks, one right after sending its request. The other
streams complete with exactly the text a fault-free run gives, the server ends idle with every
KV block free, and the reset prompts, sent again, are answered correctly.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

PROMPTS = [f"Item {i}: a short note about bread number {i}." for i in range(6)]
RESET_AFTER = {1: 1, 3: 3, 4: 0}  # prompt index -> chunks read before the reset (0: none)


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    import uvicorn

    from pagedllm.config import EngineConfig
    from pagedllm.engine.async_engine import AsyncLLMEngine
    from pagedllm.entrypoints.openai.http_protocol import make_server_socket
    from pagedllm.entrypoints.openai.server import build_app, uvicorn_config

    config = EngineConfig.from_flat(
        device="cpu", dtype="float32", kv_cache_memory=32 << 20, max_model_len=256
    )
    app = build_app(AsyncLLMEngine.from_config(config), served_model_names=["m"])
    sock = make_server_socket("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn_config(app, 2, 5, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(30)


def _body(prompt: str) -> dict:
    return {"model": "m", "prompt": prompt, "max_tokens": 8, "temperature": 0,
            "ignore_eos": True, "stream": True}  # fmt: skip


def _stream_text(base_url: str, prompt: str) -> str:
    text, lines = "", []
    with httpx.stream("POST", base_url + "/v1/completions", json=_body(prompt), timeout=120) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    for line in lines[:-1]:
        chunk = json.loads(line[6:])
        assert "error" not in chunk, chunk
        text += chunk["choices"][0]["text"]
    return text


def _reset_after(base_url: str, prompt: str, chunks: int) -> None:
    """Send the request on a raw socket, read ``chunks`` SSE events, then reset the socket."""
    host, port = base_url.removeprefix("http://").split(":")
    payload = json.dumps(_body(prompt)).encode()
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n").encode()  # fmt: skip
    sock = socket.create_connection((host, int(port)), timeout=60)
    sock.sendall(head + payload)
    received = b""
    while received.count(b"data: ") < chunks:
        data = sock.recv(4096)
        assert data, "the server closed the stream early"
        received += data
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # RST, not FIN


def _idle(base_url: str, timeout: float = 30) -> dict[str, float]:
    from pagedllm.metrics import parse_metrics

    deadline = time.monotonic() + timeout
    while True:
        values = parse_metrics(httpx.get(base_url + "/metrics").text)
        busy = values["pagedllm:num_requests_running"] + values["pagedllm:num_requests_waiting"]
        if (busy == 0 and values["pagedllm:kv_cache_usage_perc"] == 0) or (
            time.monotonic() > deadline
        ):
            return values
        time.sleep(0.1)


def test_reset_client_sockets_fail_only_themselves(base_url: str) -> None:
    reference = [_stream_text(base_url, p) for p in PROMPTS]  # one at a time, no faults

    def run(i: int) -> str | None:
        if i in RESET_AFTER:
            _reset_after(base_url, PROMPTS[i], RESET_AFTER[i])
            return None
        return _stream_text(base_url, PROMPTS[i])

    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        results = list(pool.map(run, range(len(PROMPTS))))
    for i, text in enumerate(results):
        if i not in RESET_AFTER:
            assert text == reference[i], i
    values = _idle(base_url)
    assert values["pagedllm:num_requests_running"] == 0
    assert values["pagedllm:kv_cache_usage_perc"] == 0
    assert httpx.get(base_url + "/health").status_code == 200
    for i in RESET_AFTER:
        assert _stream_text(base_url, PROMPTS[i]) == reference[i]
