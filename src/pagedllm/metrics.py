"""Prometheus text-format metrics, written by hand (no prometheus_client dependency).

``ServerMetrics`` holds the server-side latency histograms (time to first token, inter-token
latency, end-to-end latency) and renders them, together with a snapshot of the engine's
``EngineStats``, in the Prometheus exposition format (version 0.0.4). Metric names are prefixed
``pagedllm:`` like vLLM's ``vllm:``.
"""

from __future__ import annotations

import bisect
import threading
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Bucket upper bounds in seconds; chosen to cover a fast GPU (ms) and a slow CPU (s).
TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
ITL_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.015,
    0.02,
    0.025,
    0.03,
    0.04,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
)
E2E_BUCKETS = (
    0.05,
    0.1,
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
)


class Histogram:
    """A cumulative-bucket histogram (thread-safe)."""

    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...]) -> None:
        self.name = name
        self.help = help_text
        self.buckets = tuple(sorted(buckets))
        self._counts = [0] * (len(self.buckets) + 1)  # last slot: +Inf only
        self._sum = 0.0
        self._count = 0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            self._counts[bisect.bisect_left(self.buckets, value)] += 1
            self._sum += value
            self._count += 1

    @property
    def count(self) -> int:
        return self._count

    def render(self, labels: str) -> list[str]:
        with self._lock:
            counts, total, count = list(self._counts), self._sum, self._count
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        cumulative = 0
        for bound, n in zip(self.buckets, counts, strict=False):
            cumulative += n
            lines.append(f'{self.name}_bucket{{{labels},le="{_fmt(bound)}"}} {cumulative}')
        lines.append(f'{self.name}_bucket{{{labels},le="+Inf"}} {count}')
        lines.append(f"{self.name}_sum{{{labels}}} {_fmt(total)}")
        lines.append(f"{self.name}_count{{{labels}}} {count}")
        return lines


class ServerMetrics:
    """Latency histograms fed by the async engine, rendered with the engine's stats."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self.ttft = Histogram(
            "pagedllm:time_to_first_token_seconds",
            "Time from request arrival to its first generated token.",
            TTFT_BUCKETS,
        )
        self.itl = Histogram(
            "pagedllm:inter_token_latency_seconds",
            "Time between consecutive generated tokens of a request.",
            ITL_BUCKETS,
        )
        self.e2e = Histogram(
            "pagedllm:e2e_request_latency_seconds",
            "Time from request arrival to its end.",
            E2E_BUCKETS,
        )

    def observe_ttft(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def observe_itl(self, seconds: float) -> None:
        self.itl.observe(seconds)

    def observe_e2e(self, seconds: float) -> None:
        self.e2e.observe(seconds)

    def render(self, stats: Any | None) -> str:
        """The whole /metrics page: engine gauges and counters, then the histograms."""
        labels = f'model_name="{_escape(self.model_name)}"'
        lines: list[str] = []
        for name, kind, help_text, value in _engine_series(stats):
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            lines.append(f"{name}{{{labels}}} {_fmt(value)}")
        for hist in (self.ttft, self.itl, self.e2e):
            lines.extend(hist.render(labels))
        return "\n".join(lines) + "\n"


def _engine_series(stats: Any | None) -> list[tuple[str, str, str, float]]:
    """(name, type, help, value) for each engine-level series; zeros before the first step."""

    def get(field: str) -> float:
        return float(getattr(stats, field, 0) or 0) if stats is not None else 0.0

    queries = get("prefix_cache_queries")
    hits = get("prefix_cache_hits")
    return [
        (
            "pagedllm:num_requests_running",
            "gauge",
            "Requests in the running batch.",
            get("num_running"),
        ),
        (
            "pagedllm:num_requests_waiting",
            "gauge",
            "Requests waiting to be scheduled.",
            get("num_waiting"),
        ),
        (
            "pagedllm:num_requests_swapped",
            "gauge",
            "Requests swapped out to CPU.",
            get("num_swapped"),
        ),
        (
            "pagedllm:kv_cache_blocks_used",
            "gauge",
            "KV cache blocks in use.",
            get("kv_blocks_used"),
        ),
        (
            "pagedllm:kv_cache_blocks_total",
            "gauge",
            "KV cache blocks in the pool.",
            get("kv_blocks_total"),
        ),
        (
            "pagedllm:kv_cache_usage_perc",
            "gauge",
            "Fraction of KV cache blocks in use (0-1).",
            get("kv_usage"),
        ),
        (
            "pagedllm:prefix_cache_queries_total",
            "counter",
            "Prefix-cache lookups (blocks).",
            queries,
        ),
        ("pagedllm:prefix_cache_hits_total", "counter", "Prefix-cache hits (blocks).", hits),
        (
            "pagedllm:prefix_cache_hit_rate",
            "gauge",
            "Prefix-cache hits / queries.",
            hits / queries if queries else 0.0,
        ),
        (
            "pagedllm:num_preemptions_total",
            "counter",
            "Preemptions since start.",
            get("num_preemptions"),
        ),
        (
            "pagedllm:prompt_tokens_total",
            "counter",
            "Prompt tokens processed.",
            get("prompt_tokens_total"),
        ),
        (
            "pagedllm:generation_tokens_total",
            "counter",
            "Tokens generated.",
            get("generation_tokens_total"),
        ),
    ]


def _fmt(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def parse_metrics(text: str) -> dict[str, float]:
    """Series name (without labels) -> value, for tests and the benchmark (first sample wins)."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        name = series.split("{", 1)[0]
        if "_bucket" in name:
            continue
        values.setdefault(name, float(value))
    return values
