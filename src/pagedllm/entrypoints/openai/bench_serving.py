"""``pagedllm bench serve``: load a running OpenAI-compatible server at several concurrencies.

For each concurrency level it sends ``--num-prompts`` streamed completions (at most
``concurrency`` in flight), and measures per request the time to first token (TTFT), the time
per output token after the first (TPOT) and every inter-token gap (ITL). It reports request
throughput, output tokens/s, and p50/p90/p99 of TTFT/TPOT/ITL as a table and (``--out``) JSON.

Only ``httpx`` is needed (imported lazily): the server is measured from outside, as a client
sees it. Prompts are drawn with a fixed seed so runs stay comparable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from pagedllm.progress import progress_bar

_WORDS = (
    "the quick brown fox jumps over a lazy dog while paged attention keeps every block "
    "of the cache busy serving many requests at once on one small machine"
).split()


@dataclass(slots=True)
class RequestResult:
    ok: bool
    ttft: float = 0.0
    e2e: float = 0.0
    output_tokens: int = 0
    itls: list[float] = field(default_factory=list)
    error: str = ""


def add_bench_serve_args(parser: argparse.ArgumentParser) -> None:
    """Options of ``pagedllm bench serve``."""
    parser.add_argument(
        "--base-url", default="http://127.0.0.1:8000", help="server root (without /v1)"
    )
    parser.add_argument("--api-key", default=None, help="the server's API key, if it has one")
    parser.add_argument("--model", default=None, help="model name (default: the server's first)")
    parser.add_argument(
        "--concurrency", default="1,4,16", help="comma-separated concurrency levels"
    )
    parser.add_argument(
        "--num-prompts",
        type=int,
        default=None,
        help="requests per level (default: max(8, 2 x concurrency))",
    )
    parser.add_argument(
        "--input-len", default="32,256", help="prompt length range in words, 'lo,hi'"
    )
    parser.add_argument("--max-tokens", type=int, default=32, help="output tokens per request")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random prompts")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    parser.add_argument("--out", default=None, help="write the results as JSON here")


def _prompts(n: int, lo: int, hi: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(lo, hi))) for _ in range(n)]


async def _one(client: Any, url: str, body: dict) -> RequestResult:
    start = time.perf_counter()
    last = None
    result = RequestResult(ok=False)
    try:
        async with client.stream("POST", url, json=body) as resp:
            if resp.status_code != 200:
                result.error = f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}"
                return result
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    result.error = chunk["error"].get("message", "error")
                    return result
                if chunk.get("usage"):
                    result.output_tokens = chunk["usage"]["completion_tokens"]
                if chunk.get("choices") and chunk["choices"][0].get("text"):
                    now = time.perf_counter()
                    if last is None:
                        result.ttft = now - start
                    else:
                        result.itls.append(now - last)
                    last = now
    except Exception as exc:  # noqa: BLE001 - a failed request is counted, not fatal
        result.error = f"{type(exc).__name__}: {exc}"
        return result
    result.e2e = time.perf_counter() - start
    result.ok = last is not None
    return result


async def _level(args: argparse.Namespace, model: str, concurrency: int) -> dict:
    import httpx

    n = args.num_prompts or max(8, 2 * concurrency)
    lo, hi = (int(x) for x in args.input_len.split(","))
    prompts = _prompts(n, lo, hi, args.seed + concurrency)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = httpx.Limits(max_connections=concurrency + 2)
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(
        base_url=args.base_url, headers=headers, limits=limits, timeout=args.timeout
    ) as client:

        async def run(prompt: str) -> RequestResult:
            body = {
                "model": model,
                "prompt": prompt,
                "max_tokens": args.max_tokens,
                "temperature": 0,
                "ignore_eos": True,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            async with gate:
                result = await _one(client, "/v1/completions", body)
            bar.update(1)
            return result

        bar = progress_bar(len(prompts), f"concurrency {concurrency}", "req")
        start = time.perf_counter()
        try:
            results = await asyncio.gather(*(run(p) for p in prompts))
        finally:
            bar.close()
        duration = time.perf_counter() - start
    return _summarize(concurrency, results, duration)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def _summarize(concurrency: int, results: list[RequestResult], duration: float) -> dict:
    ok = [r for r in results if r.ok]
    tokens = sum(r.output_tokens for r in ok)
    tpots = [(r.e2e - r.ttft) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1]
    itls = [x for r in ok for x in r.itls]
    summary: dict[str, Any] = {
        "concurrency": concurrency,
        "requests": len(results),
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "duration_s": duration,
        "request_throughput": len(ok) / duration,
        "output_tok_s": tokens / duration,
        "output_tokens": tokens,
        "mean_ttft_ms": statistics.fmean([r.ttft for r in ok]) * 1e3 if ok else float("nan"),
    }
    for name, values in (("ttft", [r.ttft for r in ok]), ("tpot", tpots), ("itl", itls)):
        for q in (50, 90, 99):
            summary[f"p{q}_{name}_ms"] = _pct(values, q) * 1e3
    errors = sorted({r.error for r in results if r.error})
    if errors:
        summary["errors"] = errors[:5]
    return summary


def format_table(rows: list[dict]) -> str:
    cols = [
        ("conc", "concurrency", "d"),
        ("ok", "completed", "d"),
        ("req/s", "request_throughput", ".2f"),
        ("out tok/s", "output_tok_s", ".1f"),
    ]
    for name in ("ttft", "tpot", "itl"):
        cols += [(f"{name} p{q}", f"p{q}_{name}_ms", ".1f") for q in (50, 90, 99)]
    header = " | ".join(f"{c[0]:>10}" for c in cols)
    lines = [header + "   (latencies in ms)", "-" * len(header)]
    for row in rows:
        lines.append(" | ".join(f"{format(row[key], fmt):>10}" for _, key, fmt in cols))
    return "\n".join(lines)


async def _main(args: argparse.Namespace) -> list[dict]:
    import httpx

    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    async with httpx.AsyncClient(base_url=args.base_url, headers=headers, timeout=60) as client:
        model = args.model or (await client.get("/v1/models")).json()["data"][0]["id"]
        warm = {"model": model, "prompt": "warm up", "max_tokens": 4, "temperature": 0}
        (await client.post("/v1/completions", json=warm)).raise_for_status()
    levels = [int(x) for x in str(args.concurrency).split(",") if x.strip()]
    rows = []
    for concurrency in levels:
        rows.append(await _level(args, model, concurrency))
        print(f"concurrency {concurrency}: done ({rows[-1]['completed']} ok)", flush=True)
    return rows


def run_bench_serve(args: argparse.Namespace) -> int:
    """Run the sweep; print the table; write JSON to ``--out``. 0 when every request succeeded."""
    try:
        import httpx  # noqa: F401
    except ImportError as exc:
        raise ValueError(
            "pagedllm bench serve needs httpx: pip install 'pagedllm[bench]' (or '[server]')"
        ) from exc
    rows = asyncio.run(_main(args))
    print(format_table(rows))
    if args.out:
        meta = {
            "base_url": args.base_url,
            "max_tokens": args.max_tokens,
            "input_len_words": args.input_len,
            "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        with open(args.out, "w") as f:
            json.dump({"config": meta, "results": rows}, f, indent=2)
    return 0 if all(r["failed"] == 0 for r in rows) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pagedllm bench serve", description=__doc__)
    add_bench_serve_args(parser)
    return run_bench_serve(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
