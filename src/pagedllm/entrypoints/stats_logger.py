"""Server logs: periodic engine stats (like vLLM's) and opt-in per-request lines.

``StatsLogger`` turns the engine's cumulative counters into rates every ``interval`` seconds:

    engine: prompt 812.4 tok/s, generation 96.1 tok/s, running 4, waiting 0, swapped 0,
    KV usage 12.5% (160/1280 pages), prefix cache hit rate 43.0%

It is called with every fresh ``EngineStats`` (on the engine thread) and logs only when the
interval has passed and something happened since the last line, so an idle server stays quiet.
``RequestLogger`` (``--log-requests``) logs one line when a request arrives and one when it
ends; prompt text only with ``--log-prompts``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("pagedllm.stats")
request_logger = logging.getLogger("pagedllm.requests")


@dataclass(slots=True)
class _Mark:
    time: float
    prompt_tokens: int
    generation_tokens: int
    prefix_queries: int
    prefix_hits: int


class StatsLogger:
    """Logs throughput, queue lengths, KV usage and prefix-cache hit rate periodically."""

    def __init__(self, interval: float = 10.0, clock: Any = time.monotonic) -> None:
        if interval <= 0:
            raise ValueError(f"the stats interval must be positive seconds, got {interval}")
        self.interval = interval
        self._clock = clock
        self._last: _Mark | None = None

    def __call__(self, stats: Any) -> str | None:
        """Observe one stats snapshot; return (and log) a line when one is due."""
        now = self._clock()
        mark = _Mark(
            now,
            stats.prompt_tokens_total,
            stats.generation_tokens_total,
            stats.prefix_cache_queries,
            stats.prefix_cache_hits,
        )
        if self._last is None:
            self._last = mark
            return None
        elapsed = now - self._last.time
        if elapsed < self.interval:
            return None
        prev, self._last = self._last, mark
        busy = stats.num_running or stats.num_waiting or stats.num_swapped
        if not busy and mark.generation_tokens == prev.generation_tokens:
            return None  # idle and nothing finished since the last line: stay quiet
        line = format_stats_line(stats, prev, mark, elapsed)
        logger.info("%s", line)
        return line


def format_stats_line(stats: Any, prev: _Mark, mark: _Mark, elapsed: float) -> str:
    """One log line over the ``elapsed`` seconds between ``prev`` and ``mark``."""
    prompt_rate = (mark.prompt_tokens - prev.prompt_tokens) / elapsed
    gen_rate = (mark.generation_tokens - prev.generation_tokens) / elapsed
    queries = mark.prefix_queries - prev.prefix_queries
    hits = mark.prefix_hits - prev.prefix_hits
    hit_rate = f"{100.0 * hits / queries:.1f}%" if queries else "n/a"
    return (
        f"engine: prompt {prompt_rate:.1f} tok/s, generation {gen_rate:.1f} tok/s, "
        f"running {stats.num_running}, waiting {stats.num_waiting}, "
        f"swapped {stats.num_swapped}, KV usage {100.0 * stats.kv_usage:.1f}% "
        f"({stats.kv_blocks_used}/{stats.kv_blocks_total} pages), "
        f"prefix cache hit rate {hit_rate}"
    )


class RequestLogger:
    """``--log-requests``: a line per arriving and per finished request."""

    def __init__(self, log_prompts: bool = False, max_prompt_chars: int = 200) -> None:
        self.log_prompts = log_prompts
        self.max_prompt_chars = max_prompt_chars

    def received(
        self, request_id: str, prompt: Any, prompt_token_ids: list[int] | None, params: Any
    ) -> str:
        """Log an accepted request: its sampling settings, its prompt only when asked."""
        size = (
            f"{len(prompt_token_ids)} prompt tokens"
            if prompt_token_ids is not None
            else f"{len(prompt)} prompt chars"
            if isinstance(prompt, str)
            else f"{len(prompt or [])} prompt tokens"
        )
        line = (
            f"request {request_id} received: {size}, max_tokens={params.max_tokens}, "
            f"temperature={params.temperature}, top_p={params.top_p}, n={params.n}"
        )
        if self.log_prompts:
            shown = prompt if isinstance(prompt, str) else prompt_token_ids or prompt
            text = repr(shown)
            if len(text) > self.max_prompt_chars:
                text = text[: self.max_prompt_chars] + "..."
            line += f", prompt={text}"
        request_logger.info("%s", line)
        return line

    def finished(self, out: Any, ttft: float | None, e2e: float) -> str:
        """Log a finished request: tokens in and out, why it ended, latencies."""
        completion = sum(len(c.token_ids) for c in out.outputs)
        reasons = ",".join(sorted({str(c.finish_reason) for c in out.outputs}))
        cached = getattr(getattr(out, "metrics", None), "num_cached_tokens", 0) or 0
        ttft_text = "n/a" if ttft is None else f"{ttft * 1000:.0f} ms"
        line = (
            f"request {out.request_id} finished ({reasons}): "
            f"{len(out.prompt_token_ids)} prompt tokens ({cached} cached), "
            f"{completion} output tokens, TTFT {ttft_text}, total {e2e:.2f} s"
        )
        request_logger.info("%s", line)
        return line


def add_logging_args(parser: Any) -> None:
    """``pagedllm serve`` options for request logs and periodic stats."""
    parser.add_argument(
        "--log-requests",
        action="store_true",
        help="log one line per request as it arrives and as it ends (no prompt text)",
    )
    parser.add_argument(
        "--log-prompts",
        action="store_true",
        help="log requests (as --log-requests) with their prompt (first 200 characters)",
    )
    parser.add_argument(
        "--log-stats-interval",
        type=float,
        default=10.0,
        help="seconds between engine stats lines in the log while busy (0: none)",
    )


def attach_loggers(async_engine: Any, args: Any, stats: bool = True) -> None:
    """Wire ``--log-requests`` and ``--log-stats-interval`` into an ``AsyncLLMEngine``
    (``stats=False``: no engine stats lines; one of several front ends logs them)."""
    log_prompts = bool(getattr(args, "log_prompts", False))
    if getattr(args, "log_requests", False) or log_prompts:
        async_engine.request_logger = RequestLogger(log_prompts=log_prompts)
    interval = getattr(args, "log_stats_interval", 0) or 0
    if interval < 0:
        raise ValueError(f"log_stats_interval must be >= 0 seconds, got {interval}")
    if interval > 0 and stats:
        stats_logger = StatsLogger(interval)
        async_engine.stats_hooks.append(lambda _engine, stats: stats_logger(stats))
