"""/metrics through prometheus_client: vLLM's series names next to ours."""

from __future__ import annotations

import pytest

pytest.importorskip("prometheus_client")


def test_vllm_dashboard_names(client, server, http, idle):
    client.completions.create(model=server.model, prompt="Hello", max_tokens=3)
    values = idle()
    text = http.get("/metrics").text
    assert "# TYPE vllm:time_to_first_token_seconds histogram" in text
    for name in ("kv_cache_usage_perc", "num_requests_running", "num_requests_waiting"):
        assert values[f"vllm:{name}"] == values[f"pagedllm:{name}"]
    for name in ("prefix_cache_queries_total", "prefix_cache_hits_total", "prompt_tokens_total",
                 "generation_tokens_total", "num_preemptions_total"):  # fmt: skip
        assert values[f"vllm:{name}"] == values[f"pagedllm:{name}"]
    assert values["vllm:prompt_tokens_total"] > 0
    assert values["vllm:e2e_request_latency_seconds_count"] > 0
    assert 'model_name="smol"' in text
