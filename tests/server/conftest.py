"""A real uvicorn server over the real engine (bundled model, CPU) on a free loopback port.

One server for the whole ``tests/server`` session: loading the model is the slow part. It
requires an API key and serves the model under the name ``MODEL``, so the 401/404 paths are
testable on the same server as everything else.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

# PAGEDLLM_TEST_ENGINE_PROCESS=1 runs the session server with the engine core in its own process
# (``AsyncMPEngine``), as ``pagedllm serve`` does on a GPU; unset, in-process (the CPU default)
ENGINE_PROCESS = os.environ.get("PAGEDLLM_TEST_ENGINE_PROCESS", "") == "1"
API_KEY = "test-key"
MODEL = "smol"
MAX_MODEL_LEN = 512
MAX_BODY = 1 << 20
HEADER_TIMEOUT = 1.0  # short, so the slow-header test is quick
BODY_TIMEOUT = 1.0


@dataclass
class ServerHandle:
    base_url: str
    api_key: str
    model: str
    engine: object
    max_model_len: int = MAX_MODEL_LEN
    max_body: int = MAX_BODY
    header_timeout: float = HEADER_TIMEOUT
    body_timeout: float = BODY_TIMEOUT

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


def engine_config():
    from pagedllm.config import CacheConfig, EngineConfig, ModelSpec, SchedulerConfig

    return EngineConfig(
        model=ModelSpec(device="cpu"),
        cache=CacheConfig(kv_cache_memory=256 << 20),
        scheduler=SchedulerConfig(
            max_model_len=MAX_MODEL_LEN, max_num_seqs=64, max_num_batched_tokens=2048
        ),
    ).validate()


@pytest.fixture(scope="session")
def server() -> Iterator[ServerHandle]:
    import uvicorn

    from pagedllm.engine.async_engine import AsyncLLMEngine
    from pagedllm.entrypoints.openai.http_protocol import make_server_socket
    from pagedllm.entrypoints.openai.server import build_app, uvicorn_config

    if ENGINE_PROCESS:
        from pagedllm.engine.core_client import AsyncMPEngine

        engine = AsyncMPEngine.from_config(engine_config(), max_waiting_requests=256)
    else:
        engine = AsyncLLMEngine.from_config(engine_config(), max_waiting_requests=256)
    app = build_app(
        engine,
        api_key=API_KEY,
        served_model_names=[MODEL],
        max_body_bytes=MAX_BODY,
        drain_timeout=5.0,
        tool_call_parser="hermes",
        body_timeout=BODY_TIMEOUT,
    )
    sock = make_server_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    uv = uvicorn.Server(uvicorn_config(app, 5, HEADER_TIMEOUT, log_level="warning"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not uv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    yield ServerHandle(f"http://127.0.0.1:{port}", API_KEY, MODEL, engine)
    uv.should_exit = True
    thread.join(30)
    engine.shutdown()


@pytest.fixture(scope="session")
def client(server: ServerHandle):
    """The official OpenAI client pointed at the test server."""
    openai = pytest.importorskip("openai")
    return openai.OpenAI(
        base_url=server.base_url + "/v1", api_key=server.api_key, max_retries=0, timeout=120
    )


@pytest.fixture(scope="session")
def http(server: ServerHandle):
    """A raw httpx client with the API key set."""
    httpx = pytest.importorskip("httpx")
    with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=120) as c:
        yield c


def metrics_values(http) -> dict[str, float]:
    from pagedllm.metrics import parse_metrics

    resp = http.get("/metrics")
    assert resp.status_code == 200
    return parse_metrics(resp.text)


def wait_idle(http, timeout: float = 20.0) -> dict[str, float]:
    """Poll /metrics until nothing runs or waits and no KV block is used."""
    deadline = time.monotonic() + timeout
    while True:
        values = metrics_values(http)
        idle = (
            values["pagedllm:num_requests_running"] == 0
            and values["pagedllm:num_requests_waiting"] == 0
            and values["pagedllm:kv_cache_usage_perc"] == 0
        )
        if idle or time.monotonic() > deadline:
            return values
        time.sleep(0.1)


@pytest.fixture
def idle(http):
    """``idle(timeout)``: wait until the server is idle, return its /metrics values."""
    return lambda timeout=20.0: wait_idle(http, timeout)
