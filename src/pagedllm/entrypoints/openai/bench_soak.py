"""``pagedllm bench serve --soak MINUTES``: mixed, hostile traffic against a running server.

Workers loop until the time is up, each time picking one of: a greedy completion of a fixed
prompt (streamed or not; its text must equal the answer recorded at the start, so start the
server with ``--dtype float32``), a sampled chat stream, a stream the client aborts after a few
chunks, a request whose client disconnects before the answer, a malformed request (must be a
400, or a 429 when the server is full), and now and then a burst of concurrent requests past the server's waiting-queue cap
(start the server with a small ``--max-waiting-requests``: every rejection must be a 429 with
``Retry-After``). Meanwhile ``/health`` is polled and, with ``--server-pid``, the server's RSS
sampled. At the end, once the server is idle, its KV blocks in use are read from ``/metrics``.

Counts: completed, rejected (429), failed (a well-formed error: an error event then [DONE], or
a JSON error), broken (anything else: a cut stream, a malformed body, a 5xx without a JSON
body, a 429 without Retry-After, a bad request not answered 400), wrong (greedy text differing
from the reference), plus the intended aborts, disconnects and bad requests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pagedllm.entrypoints.openai.bench_serving import _pct

_FIXED = [f"Question {i}: name one thing a baker does before {i + 5} am." for i in range(8)]
_BAD_BODIES: list[dict[str, Any]] = [
    {"prompt": "hi", "max_tokens": "5"},
    {"prompt": "hi", "temperature": 9},
    {"prompt": "hi", "seed": 2**64},
    {"prompt": "hi", "n": 100_000},
    {"prompt": [10**9]},
    {"prompt": ""},
    {"prompt": "hi", "max_tokens": 0},
]


@dataclass(slots=True)
class SoakStats:
    counts: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    health: list[float] = field(default_factory=list)
    rss: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, bytes)
    examples: dict[str, str] = field(default_factory=dict)

    def add(self, kind: str, detail: str = "") -> None:
        self.counts[kind] += 1
        if detail and kind in ("broken", "wrong", "failed"):
            self.examples.setdefault(kind, detail[:300])


def add_soak_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--soak", type=float, default=None, metavar="MINUTES", help="run the soak test instead"
    )
    parser.add_argument("--soak-workers", type=int, default=6, help="concurrent soak clients")
    parser.add_argument("--soak-burst", type=int, default=24, help="requests per overload burst")
    parser.add_argument("--server-pid", type=int, default=None, help="sample this RSS (Linux)")


async def _stream(client: Any, path: str, body: dict, drop_after: int | None) -> tuple[str, str]:
    """(outcome, text) of one streamed request; drop_after: close after that many chunks."""
    text, chunks, finish = "", 0, None
    async with client.stream("POST", path, json=body) as resp:
        if resp.status_code != 200:
            return _non_200(resp.status_code, resp.headers, await resp.aread()), ""
        lines = [line async for line in _lines(resp, drop_after)]
    if drop_after is not None and lines and lines[-1] is None:
        return "aborted", ""
    if not lines or lines[-1] != "data: [DONE]":
        return "broken", f"stream without [DONE]: {lines[-3:]}"
    for line in lines[:-1]:
        if not line.startswith("data: "):
            return "broken", f"bad SSE line {line!r}"
        chunk = json.loads(line[6:])
        if "error" in chunk:
            return "failed", json.dumps(chunk["error"])
        for choice in chunk.get("choices", []):
            chunks += 1
            text += choice.get("text") or (choice.get("delta") or {}).get("content") or ""
            finish = choice.get("finish_reason") or finish
    return ("completed" if finish else "broken"), text if finish else f"no finish: {text!r}"


async def _lines(resp: Any, drop_after: int | None):  # noqa: ANN202 - an async generator
    seen = 0
    async for line in resp.aiter_lines():
        if not line:
            continue
        yield line
        seen += 1
        if drop_after is not None and seen >= drop_after and line != "data: [DONE]":
            yield None  # the client walks away mid-stream
            return


def _non_200(status: int, headers: Any, raw: bytes) -> str:
    try:
        error = json.loads(raw)["error"]
        assert {"message", "type", "code"} <= set(error)
    except Exception:  # noqa: BLE001 - anything but an OpenAI-shaped error body is broken
        return "broken"
    if status == 429:
        return "rejected" if headers.get("retry-after", "").isdigit() else "broken"
    return "bad_request" if status == 400 else "failed"


async def _one_action(client: Any, model: str, refs: dict[str, str], rng: random.Random,
                      stats: SoakStats, burst: int) -> None:  # fmt: skip
    roll = rng.random()
    start = time.perf_counter()
    if roll < 0.45:  # greedy, checked against the reference
        prompt = rng.choice(_FIXED)
        body = {"model": model, "prompt": prompt, "max_tokens": 16, "temperature": 0,
                "ignore_eos": True}  # fmt: skip
        if rng.random() < 0.5:
            outcome, text = await _stream(client, "/v1/completions", {**body, "stream": True}, None)
        else:
            resp = await client.post("/v1/completions", json=body)
            if resp.status_code == 200:
                outcome, text = "completed", resp.json()["choices"][0]["text"]
            else:
                outcome, text = _non_200(resp.status_code, resp.headers, resp.content), ""
        if outcome == "completed" and text != refs[prompt]:
            outcome, text = "wrong", f"{prompt!r}: {text!r} != {refs[prompt]!r}"
    elif roll < 0.65:  # sampled chat stream
        body = {"model": model, "stream": True, "temperature": 0.8, "seed": rng.randrange(1000),
                "max_tokens": rng.randint(4, 48),
                "messages": [{"role": "user", "content": f"Say something about {rng.random()}"}]}  # fmt: skip
        outcome, text = await _stream(client, "/v1/chat/completions", body, None)
    elif roll < 0.75:  # abort mid-stream
        body = {"model": model, "prompt": rng.choice(_FIXED), "max_tokens": 64, "stream": True}
        outcome, text = await _stream(client, "/v1/completions", body, rng.randint(1, 4))
    elif roll < 0.85:  # disconnect before the answer
        body = {"model": model, "prompt": [rng.choice(_FIXED)] * 3, "max_tokens": 64,
                "ignore_eos": True}  # fmt: skip
        try:
            await client.post("/v1/completions", json=body, timeout=rng.uniform(0.05, 0.5))
            outcome, text = "completed", ""
        except Exception:  # noqa: BLE001 - the client timed out and left, as intended
            outcome, text = "disconnected", ""
    elif roll < 0.97:  # malformed
        resp = await client.post(
            "/v1/completions", json={"model": model, **rng.choice(_BAD_BODIES)}
        )
        outcome, text = _non_200(resp.status_code, resp.headers, resp.content), ""
        if outcome == "bad_request":
            outcome, text = "bad_rejected", ""
        elif outcome != "rejected":  # a 429 is a fine answer under overload; anything else is not
            outcome, text = "broken", f"bad request answered {resp.status_code}: {resp.text}"
    else:  # overload burst
        body = {"model": model, "prompt": rng.choice(_FIXED), "max_tokens": 8}
        resps = await asyncio.gather(
            *(client.post("/v1/completions", json=body) for _ in range(burst)),
            return_exceptions=True,
        )
        for resp in resps:
            if isinstance(resp, BaseException):
                stats.add("broken", repr(resp))
            elif resp.status_code == 200:
                stats.add("completed")
            else:
                stats.add(_non_200(resp.status_code, resp.headers, resp.content), resp.text)
        return
    stats.add(outcome, text)
    if outcome == "completed":
        stats.latencies.append(time.perf_counter() - start)


async def _worker(client: Any, model: str, refs: dict[str, str], seed: int, end: float,
                  stats: SoakStats, burst: int) -> None:  # fmt: skip
    rng = random.Random(seed)
    while time.monotonic() < end:
        try:
            await _one_action(client, model, refs, rng, stats, burst)
        except Exception as exc:  # noqa: BLE001 - a transport failure we did not intend
            stats.add("broken", f"{type(exc).__name__}: {exc}")


async def _poll_health(client: Any, end: float, stats: SoakStats) -> None:
    while time.monotonic() < end:
        start = time.perf_counter()
        try:
            ok = (await client.get("/health", timeout=10)).status_code == 200
        except Exception:  # noqa: BLE001
            ok = False
        stats.health.append(time.perf_counter() - start if ok else float("inf"))
        await asyncio.sleep(0.5)


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


async def _sample_rss(pid: int | None, start: float, end: float, stats: SoakStats) -> None:
    while pid is not None and time.monotonic() < end:
        stats.rss.append((time.monotonic() - start, _rss_bytes(pid)))
        await asyncio.sleep(5)


async def _metrics(client: Any) -> dict[str, float]:
    from pagedllm.metrics import parse_metrics

    return parse_metrics((await client.get("/metrics")).text)


async def _wait_idle(client: Any, timeout: float = 120) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        values = await _metrics(client)
        busy = values.get("pagedllm:num_requests_running", 0) + values.get(
            "pagedllm:num_requests_waiting", 0
        )
        if (busy == 0 and values.get("pagedllm:kv_cache_usage_perc", 0) == 0) or (
            time.monotonic() > deadline
        ):
            return values
        await asyncio.sleep(0.5)


async def _soak(args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = httpx.Limits(max_connections=args.soak_workers * (args.soak_burst + 2))
    async with httpx.AsyncClient(
        base_url=args.base_url, headers=headers, timeout=args.timeout, limits=limits
    ) as client:
        model = args.model or (await client.get("/v1/models")).json()["data"][0]["id"]
        refs = {}
        for prompt in _FIXED:  # one at a time on an idle server: the reference answers
            body = {"model": model, "prompt": prompt, "max_tokens": 16, "temperature": 0,
                    "ignore_eos": True}  # fmt: skip
            resp = await client.post("/v1/completions", json=body)
            resp.raise_for_status()
            refs[prompt] = resp.json()["choices"][0]["text"]
        stats = SoakStats()
        start = time.monotonic()
        end = start + args.soak * 60
        await asyncio.gather(
            _poll_health(client, end, stats),
            _sample_rss(args.server_pid, start, end, stats),
            *(
                _worker(client, model, refs, args.seed + i, end, stats, args.soak_burst)
                for i in range(args.soak_workers)
            ),
        )
        duration = time.monotonic() - start
        final = await _wait_idle(client)
        if args.server_pid is not None:
            stats.rss.append((time.monotonic() - start, _rss_bytes(args.server_pid)))
    return _soak_summary(stats, duration, final)


def _soak_summary(stats: SoakStats, duration: float, final: dict[str, float]) -> dict[str, Any]:
    rss_growth = float("nan")
    if len(stats.rss) >= 4:
        half = stats.rss[len(stats.rss) // 2][1]
        rss_growth = (stats.rss[-1][1] - half) / half * 100
    summary: dict[str, Any] = {
        "duration_s": round(duration, 1),
        **{
            k: stats.counts.get(k, 0)
            for k in (
                "completed",
                "rejected",
                "failed",
                "broken",
                "wrong",
                "aborted",
                "disconnected",
                "bad_rejected",
            )
        },  # fmt: skip
        "p50_latency_ms": _pct(stats.latencies, 50) * 1e3,
        "p99_latency_ms": _pct(stats.latencies, 99) * 1e3,
        "health_p50_ms": _pct(stats.health, 50) * 1e3,
        "health_p99_ms": _pct(stats.health, 99) * 1e3,
        "rss_start_mb": stats.rss[0][1] / 2**20 if stats.rss else float("nan"),
        "rss_end_mb": stats.rss[-1][1] / 2**20 if stats.rss else float("nan"),
        "rss_growth_last_half_pct": rss_growth,
        "kv_blocks_used_at_end": final.get("pagedllm:kv_cache_blocks_used", float("nan")),
        "requests_running_at_end": final.get("pagedllm:num_requests_running", float("nan")),
        "examples": stats.examples,
    }
    summary["acceptance"] = bool(
        summary["broken"] == 0
        and summary["wrong"] == 0
        and summary["kv_blocks_used_at_end"] == 0
        and summary["health_p99_ms"] < 100
        and not rss_growth >= 5
    )
    return summary


def format_soak(summary: dict[str, Any]) -> str:
    keys = ["duration_s", "completed", "rejected", "failed", "broken", "wrong", "aborted",
            "disconnected", "bad_rejected", "p50_latency_ms", "p99_latency_ms", "health_p50_ms",
            "health_p99_ms", "rss_start_mb", "rss_end_mb", "rss_growth_last_half_pct",
            "kv_blocks_used_at_end", "acceptance"]  # fmt: skip
    lines = [f"{k:>26}: {summary[k]:.1f}" if isinstance(summary[k], float) else
             f"{k:>26}: {summary[k]}" for k in keys]  # fmt: skip
    lines += [f"{'example ' + k:>26}: {v}" for k, v in summary["examples"].items()]
    return "\n".join(lines)


def run_soak(args: argparse.Namespace) -> int:
    """Run the soak; print the summary; JSON to ``--out``; 0 when the acceptance holds."""
    summary = asyncio.run(_soak(args))
    print(format_soak(summary))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(
                {"soak_minutes": args.soak, "base_url": args.base_url, **summary}, f, indent=2
            )
    return 0 if summary["acceptance"] else 1
