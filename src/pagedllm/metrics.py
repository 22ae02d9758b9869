"""Prometheus metrics for /metrics, through ``prometheus_client``.

``ServerMetrics`` owns one ``CollectorRegistry`` (not the process-global one, so several servers
can live in one process, as in the tests): latency histograms fed by the async engine, and a
collector that reads the engine's ``EngineStats`` snapshot at scrape time. Every series is
written as ``pagedllm:<name>``; where vLLM has a series of the same meaning (see its
``docs/design/metrics.md``) it is also written as ``vllm:<name>``, so a vLLM Grafana dashboard
works unchanged. Series only we have: KV blocks used / total, swapped requests, the prefix-cache
hit rate.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Bucket upper bounds in seconds (vLLM's); they cover a fast GPU (ms) and a slow CPU (s).
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0)  # fmt: skip
ITL_BUCKETS = (0.001, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15,
               0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0)  # fmt: skip
E2E_BUCKETS = (0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
               40.0, 50.0, 60.0, 120.0, 240.0)  # fmt: skip

# (name, kind, help, EngineStats field or None for a derived value, also under vllm:)
_ENGINE_SERIES = (
    ("num_requests_running", "gauge", "Requests in the running batch.", "num_running", True),
    ("num_requests_waiting", "gauge", "Requests waiting to be scheduled.", "num_waiting", True),
    ("num_requests_swapped", "gauge", "Requests swapped out to CPU.", "num_swapped", False),
    ("kv_cache_blocks_used", "gauge", "KV cache blocks in use.", "kv_blocks_used", False),
    ("kv_cache_blocks_total", "gauge", "KV cache blocks in the pool.", "kv_blocks_total", False),
    ("kv_cache_usage_perc", "gauge", "Fraction of KV cache blocks in use (0-1).", "kv_usage",
     True),
    ("prefix_cache_queries", "counter", "Prefix-cache lookups (blocks).", "prefix_cache_queries",
     True),
    ("prefix_cache_hits", "counter", "Prefix-cache hits (blocks).", "prefix_cache_hits", True),
    ("prefix_cache_hit_rate", "gauge", "Prefix-cache hits / queries.", None, False),
    ("num_preemptions", "counter", "Preemptions since start.", "num_preemptions", True),
    ("prompt_tokens", "counter", "Prompt tokens processed.", "prompt_tokens_total", True),
    ("generation_tokens", "counter", "Tokens generated.", "generation_tokens_total", True),
)  # fmt: skip


class _EngineCollector(Collector):
    """Reads the latest engine stats when Prometheus scrapes."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self.stats: Any | None = None

    def collect(self) -> Iterator[Metric]:
        stats = self.stats

        def get(field: str) -> float:
            return float(getattr(stats, field, 0) or 0) if stats is not None else 0.0

        for name, kind, help_text, field, vllm in _ENGINE_SERIES:
            if field is None:
                queries = get("prefix_cache_queries")
                value = get("prefix_cache_hits") / queries if queries else 0.0
            else:
                value = get(field)
            family = GaugeMetricFamily if kind == "gauge" else CounterMetricFamily
            for prefix in ("pagedllm", "vllm") if vllm else ("pagedllm",):
                metric = family(f"{prefix}:{name}", help_text, labels=["model_name"])
                metric.add_metric([self.model_name], value)
                yield metric


class _Aliased(Collector):
    """A ``pagedllm:`` histogram, also written as the same series under ``vllm:``."""

    def __init__(self, histogram: Histogram) -> None:
        self.histogram = histogram

    def collect(self) -> Iterator[Metric]:
        for metric in self.histogram.collect():
            yield metric
            alias = Metric(metric.name.replace("pagedllm:", "vllm:", 1), metric.documentation,
                           metric.type)  # fmt: skip
            alias.samples = [
                s._replace(name=s.name.replace("pagedllm:", "vllm:", 1)) for s in metric.samples
            ]
            yield alias


class ServerMetrics:
    """Latency histograms fed by the async engine, rendered with the engine's stats.

    ``front_end`` (``--api-server-count`` > 1): the histograms carry a ``front_end`` label,
    because they count only the requests this front-end process served; the engine series stay
    unlabelled, they are the one engine core's (every front end gets the same stats).
    """

    def __init__(self, model_name: str, front_end: int | None = None) -> None:
        self.model_name = model_name
        self.front_end = front_end
        self.registry = CollectorRegistry()
        self._engine = _EngineCollector(model_name)
        self.registry.register(self._engine)
        self.ttft = self._histograms(
            "time_to_first_token_seconds",
            "Time from request arrival to its first generated token.",
            TTFT_BUCKETS,
        )
        self.itl = self._histograms(
            "inter_token_latency_seconds",
            "Time between consecutive generated tokens of a request.",
            ITL_BUCKETS,
        )
        self.e2e = self._histograms(
            "e2e_request_latency_seconds", "Time from request arrival to its end.", E2E_BUCKETS
        )

    def _histograms(self, name: str, help_text: str, buckets: tuple[float, ...]) -> Any:
        labels, values = ["model_name"], [self.model_name]
        if self.front_end is not None:
            labels.append("front_end")
            values.append(str(self.front_end))
        # one histogram, written under both prefixes at scrape time (_Aliased): an observation
        # per token per stream is the hot path, so it is made once, not once per prefix
        hist = Histogram(f"pagedllm:{name}", help_text, labels, registry=None, buckets=buckets)
        self.registry.register(_Aliased(hist))
        return hist.labels(*values)

    def observe_ttft(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def observe_itl(self, seconds: float) -> None:
        self.itl.observe(seconds)

    def observe_e2e(self, seconds: float) -> None:
        self.e2e.observe(seconds)

    def render(self, stats: Any | None) -> str:
        """The whole /metrics page for the engine's latest ``EngineStats``."""
        self._engine.stats = stats
        return generate_latest(self.registry).decode("utf-8")


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
