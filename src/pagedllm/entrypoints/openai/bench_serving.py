"""``pagedllm bench serve``: load a running OpenAI-compatible server at several concurrencies.

For each concurrency level it sends ``--num-prompts`` streamed completions (at most
``concurrency`` in flight), and measures per request the time to first token (TTFT), the time
per output token after the first (TPOT) and every inter-token gap (ITL). It reports request
throughput, output tokens/s, and p50/p90/p99 of TTFT/TPOT/ITL as a table and (``--out``) JSON.

Only ``httpx`` is needed (imported lazily): the server is measured from outside, as a client
sees it. Prompts are drawn with a fixed seed so runs stay comparable. ``--prompt-ids`` sends
random token ids instead of words (W1's draw: nothing hits the prefix cache by accident);
``--client-procs`` spreads the streams over several client processes, so at hundreds of
streams the client's own parsing is not what is measured. ``--preset``/``--model-path`` makes
it start the server itself and run the same workload offline in the same run
(``bench_launch.py``).
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
        default=None,
        help="requests per level: one count, or one per --concurrency level "
        "(default: max(8, 2 x concurrency))",
    )
    parser.add_argument(
        "--input-len", default="32,256", help="prompt length range in words, 'lo,hi'"
    )
    parser.add_argument(
        "--prompt-ids",
        default=None,
        help="send random token-id prompts of 'lo,hi' tokens (ids in [0, 10000)) instead of "
        "words (--input-len)",
    )
    parser.add_argument(
        "--client-procs",
        type=int,
        default=0,
        help="client processes per level (default 0: one per 64 streams)",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs of each level (each a row of its own)"
    )
    parser.add_argument("--max-tokens", type=int, default=32, help="output tokens per request")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random prompts")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    from pagedllm.entrypoints.openai.bench_launch import add_launch_args
    from pagedllm.entrypoints.openai.bench_soak import add_soak_args

    add_soak_args(parser)
    add_launch_args(parser)


def _prompts(n: int, lo: int, hi: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(lo, hi))) for _ in range(n)]


def _num_prompts(args: argparse.Namespace, concurrency: int) -> int:
    if args.num_prompts is None:
        return max(8, 2 * concurrency)
    counts = [int(x) for x in str(args.num_prompts).split(",")]
    if len(counts) == 1:
        return counts[0]
    levels = [int(x) for x in str(args.concurrency).split(",") if x.strip()]
    if len(counts) != len(levels):
        raise ValueError("num_prompts: give one count, or one per concurrency level")
    return counts[levels.index(concurrency)]


def level_prompts(args: argparse.Namespace, concurrency: int) -> list[str] | list[list[int]]:
    """The prompts of one level: words (``--input-len``) or token ids (``--prompt-ids``)."""
    n = _num_prompts(args, concurrency)
    if args.prompt_ids:
        lo, hi = (int(x) for x in args.prompt_ids.split(","))
        rng = random.Random(args.seed + concurrency)
        return [[rng.randint(0, 9999) for _ in range(rng.randint(lo, hi))] for _ in range(n)]
    lo, hi = (int(x) for x in args.input_len.split(","))
    return _prompts(n, lo, hi, args.seed + concurrency)


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


def _body(model: str, prompt: str | list[int], max_tokens: int) -> dict:
    return {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def _run_client(
    base_url: str, api_key: str | None, bodies: list[dict], concurrency: int, timeout: float,
    label: str | None,
) -> tuple[list[RequestResult], float, float]:  # fmt: skip
    """One client: ``bodies`` with at most ``concurrency`` in flight; (results, start, end)."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=concurrency + 2)
    gate = asyncio.Semaphore(concurrency)
    bar = progress_bar(len(bodies), label, "req", enabled=None if label else False)
    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, limits=limits, timeout=timeout
    ) as client:

        async def run(body: dict) -> RequestResult:
            async with gate:
                result = await _one(client, "/v1/completions", body)
            bar.update(1)
            return result

        start = time.monotonic()
        try:
            results = await asyncio.gather(*(run(b) for b in bodies))
        finally:
            bar.close()
        end = time.monotonic()
    return list(results), start, end


def _client_process(*args: Any) -> tuple[list[RequestResult], float, float]:
    return asyncio.run(_run_client(*args, None))


async def _level(args: argparse.Namespace, model: str, concurrency: int) -> dict:
    bodies = [_body(model, p, args.max_tokens) for p in level_prompts(args, concurrency)]
    procs = args.client_procs or max(1, (concurrency + 63) // 64)
    procs = max(1, min(procs, concurrency, len(bodies)))
    if procs == 1:
        results, start, end = await _run_client(
            args.base_url, args.api_key, bodies, concurrency, args.timeout,
            f"concurrency {concurrency}",
        )  # fmt: skip
        return _summarize(concurrency, results, end - start)
    import concurrent.futures
    import multiprocessing

    # request i goes to client i % procs; each client keeps its share of the streams busy
    shares = [concurrency // procs + (i < concurrency % procs) for i in range(procs)]
    pool = concurrent.futures.ProcessPoolExecutor(procs, multiprocessing.get_context("spawn"))
    with pool:
        loop = asyncio.get_running_loop()
        futures = [
            loop.run_in_executor(
                pool,
                _client_process,
                args.base_url,
                args.api_key,
                bodies[i::procs],
                shares[i],
                args.timeout,
            )  # fmt: skip
            for i in range(procs)
        ]
        parts = await asyncio.gather(*futures)
    results = [r for part in parts for r in part[0]]
    duration = max(p[2] for p in parts) - min(p[1] for p in parts)
    row = _summarize(concurrency, results, duration)
    row["client_procs"] = procs
    return row


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
    # which server each row measured, when ``bench serve`` started several (bench_launch.py)
    cols = [(name, key, fmt) for name, key, fmt in
            (("engine", "engine_process", "s"), ("fronts", "api_server_count", "d"))
            if rows and key in rows[0]]  # fmt: skip
    cols += [
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
        for run in range(max(1, args.repeat)):
            rows.append(await _level(args, model, concurrency))
            rows[-1]["run"] = run
            print(f"concurrency {concurrency}: done ({rows[-1]['completed']} ok)", flush=True)
    return rows


def run_levels(args: argparse.Namespace) -> list[dict]:
    """Every level against ``args.base_url`` (a warm-up request first)."""
    return asyncio.run(_main(args))


def run_bench_serve(args: argparse.Namespace) -> int:
    """Run the sweep; print the table; write JSON to ``--out``. 0 when every request succeeded.
    With ``--soak MINUTES``, run the soak test instead (``bench_soak.py``)."""
    if getattr(args, "soak", None) is not None:
        from pagedllm.entrypoints.openai.bench_soak import run_soak

        return run_soak(args)
    if getattr(args, "preset", None) or getattr(args, "model_path", None):
        from pagedllm.entrypoints.openai.bench_launch import run_launched

        return run_launched(args)
    try:
        import httpx  # noqa: F401
    except ImportError as exc:
        raise ValueError(
            "pagedllm bench serve needs httpx: pip install 'pagedllm[bench]' (or '[server]')"
        ) from exc
    rows = run_levels(args)
    print(format_table(rows))
    if args.out:
        meta = {
            "base_url": args.base_url,
            "max_tokens": args.max_tokens,
            "input_len_words": None if args.prompt_ids else args.input_len,
            "prompt_ids": args.prompt_ids,
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
