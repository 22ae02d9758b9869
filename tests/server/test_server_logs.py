"""The server's log: request lines (``--log-requests``, no prompt unless ``--log-prompts``) and
periodic engine stats, wired into the real async engine of the session's server."""

from __future__ import annotations

import argparse
import logging
import time

import pytest

from pagedllm.entrypoints.stats_logger import add_logging_args, attach_loggers

MODEL = "smol"  # the served name (tests/server/conftest.py); importing conftest by name
# is ambiguous when several test folders run together


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_logging_args(parser)
    return parser.parse_args(list(argv))


@pytest.fixture()
def wired(server):
    """Attach loggers as ``pagedllm serve`` does; detach them afterwards."""
    engine = server.engine
    hooks = list(engine.stats_hooks)

    def attach(*argv: str) -> None:
        attach_loggers(engine, _args(*argv))

    yield attach
    engine.stats_hooks[:] = hooks
    engine.request_logger = None


def test_request_and_stats_lines(http, idle, wired, caplog) -> None:
    caplog.set_level(logging.INFO, logger="pagedllm")
    wired("--log-requests", "--log-stats-interval", "0.2")
    body = {"model": MODEL, "prompt": "A secret prompt", "max_tokens": 24, "temperature": 0}
    assert http.post("/v1/completions", json={**body, "ignore_eos": True}).status_code == 200
    idle()
    deadline = time.monotonic() + 5  # the stats line of the last interval comes within 0.3 s
    while "engine: prompt" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.05)
    text = caplog.text
    assert "received: 15 prompt chars, max_tokens=24" in text
    assert "finished (length)" in text and "24 output tokens" in text
    assert "secret" not in text
    assert "engine: prompt" in text and "generation" in text and "KV usage" in text


def test_log_prompts_shows_the_prompt(http, idle, wired, caplog) -> None:
    caplog.set_level(logging.INFO, logger="pagedllm.requests")
    wired("--log-prompts", "--log-stats-interval", "0")
    body = {"model": MODEL, "prompt": "A visible prompt", "max_tokens": 2, "temperature": 0}
    assert http.post("/v1/completions", json=body).status_code == 200
    idle()
    assert "prompt='A visible prompt'" in caplog.text


def test_negative_stats_interval_is_refused(server) -> None:
    with pytest.raises(ValueError, match="log_stats_interval"):
        attach_loggers(server.engine, _args("--log-stats-interval", "-1"))
