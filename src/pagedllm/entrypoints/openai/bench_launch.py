"""``pagedllm bench serve --preset NAME | --model-path PATH``: start the server, load it, and run
the same workload offline, all in one call.

For each ``--engine-modes`` entry (``on``: the engine core in its own process; ``off``: one
process) and each ``--api-server-counts`` entry (front-end processes) it starts ``pagedllm serve`` with the engine flags of ``--serve-args``, runs every
concurrency level against it (``bench_serving.py``), and stops it with SIGTERM. Then, in this
process, it runs the largest level's workload through ``LLMEngine`` twice: once as an offline
batch (output tok/s, as ``bench throughput`` does) and once streamed as ids (the gap between a
request's tokens: the offline decode step a stream sees). The JSON holds every row, the offline
figures, and per row the ratio to them; ``broken_streams`` counts failed requests.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
from typing import Any


def add_launch_args(parser: argparse.ArgumentParser) -> None:
    """Options that make ``bench serve`` start its own server (and run the offline pass)."""
    parser.add_argument(
        "--preset", default=None, help="start a server on this preset's config (qwen3-0.6b ...)"
    )
    parser.add_argument("--model-path", default=None, help="start a server on this model (a path)")
    parser.add_argument("--dummy", action="store_true", help="random weights (load_format=dummy)")
    parser.add_argument(
        "--serve-args",
        default="",
        help="more 'pagedllm serve' flags for the started server and the offline engine, "
        'as one string (e.g. "--max-num-seqs 256 --device cuda")',
    )
    parser.add_argument(
        "--engine-modes",
        default="on",
        help="comma-separated --engine-process values to run in turn (e.g. on,off)",
    )
    parser.add_argument(
        "--api-server-counts",
        default="1",
        help="comma-separated --api-server-count values (front-end processes) to run in turn "
        "with each engine mode (e.g. 1,4); more than 1 needs the engine mode on",
    )
    parser.add_argument(
        "--no-offline", action="store_true", help="skip the offline pass of the same workload"
    )


def _engine_argv(args: argparse.Namespace) -> list[str]:
    argv = []
    if args.preset:
        from pagedllm.benchmark.workloads import preset_path

        argv += ["--model", preset_path(args.preset)]
    elif args.model_path:
        argv += ["--model", args.model_path]
    if args.dummy:
        argv += ["--load-format", "dummy"]
    return argv + shlex.split(args.serve_args)


def start_server(argv: list[str], mode: str, front_ends: int = 1) -> tuple[subprocess.Popen, str]:
    """``pagedllm serve`` on a free port; returns the process and its base URL once healthy."""
    import httpx

    cmd = [sys.executable, "-m", "pagedllm.entrypoints.openai.server", "--port", "0",
           "--log-level", "warning", "--max-waiting-requests", "0",
           "--engine-process", mode, "--api-server-count", str(front_ends), *argv]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = None
    for line in proc.stdout:
        sys.stderr.write(line)
        match = re.search(r"on (http://\S+)", line)
        if match:
            base = match.group(1)
            break
    if base is None:
        raise RuntimeError(f"the server exited ({proc.wait()}) before it started")
    threading.Thread(target=_pump, args=(proc.stdout,), daemon=True).start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server never became healthy")


def server_variants(engine_modes: str, api_server_counts: str) -> list[tuple[str, int]]:
    """(engine mode, front-end count) pairs to run, modes outer; ValueError for a count above
    1 with the engine mode off (several front ends share one engine-core process)."""
    modes = [m.strip() for m in engine_modes.split(",") if m.strip()]
    counts = [int(c) for c in str(api_server_counts).split(",") if c.strip()]
    if not modes or not counts or min(counts) < 1:
        raise ValueError("engine_modes and api_server_counts need at least one value; counts >= 1")
    if "off" in modes and max(counts) > 1:
        raise ValueError("api_server_counts above 1 need the engine mode on (not off)")
    return [(mode, count) for mode in modes for count in counts]


def _pump(stream: Any) -> None:
    for line in stream:
        sys.stderr.write(line)


def offline_pass(engine_argv: list[str], prompts: list[list[int]], max_tokens: int) -> dict:
    """The workload through one in-process engine: batch throughput and streamed token gaps."""
    from pagedllm.engine.llm_engine import LLMEngine
    from pagedllm.entrypoints.engine_args import add_engine_args, engine_config_from_args
    from pagedllm.sampling_params import SamplingParams

    parser = argparse.ArgumentParser()
    add_engine_args(parser)
    known, _ = parser.parse_known_args(engine_argv)
    engine = LLMEngine(engine_config_from_args(known))
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    try:
        engine.add_request("warm", None, SamplingParams(max_tokens=4), prompt_token_ids=[1] * 16)
        while engine.has_unfinished_requests():
            engine.step()
        result: dict[str, Any] = {"requests": len(prompts)}
        for stream in (False, True):
            for i, ids in enumerate(prompts):
                engine.add_request(f"{stream}-{i}", None, params, prompt_token_ids=ids,
                                   stream=stream, detokenize=not stream)  # fmt: skip
            last: dict[str, float] = {}
            gaps: list[float] = []
            produced = 0
            start = time.perf_counter()
            while engine.has_unfinished_requests():
                outputs = engine.step()
                now = time.perf_counter()
                for out in outputs:
                    if stream and out.outputs[0].delta_token_ids:
                        if out.request_id in last:
                            gaps.append((now - last[out.request_id])
                                        / len(out.outputs[0].delta_token_ids))  # fmt: skip
                        last[out.request_id] = now
                    if out.finished:
                        produced += len(out.outputs[0].token_ids)
            elapsed = time.perf_counter() - start
            key = "streamed" if stream else "batch"
            result[f"{key}_output_tok_s"] = produced / elapsed
            result[f"{key}_elapsed_s"] = elapsed
            if stream:
                result["p50_itl_ms"] = statistics.median(gaps) * 1e3 if gaps else float("nan")
        result["output_tok_s"] = result["batch_output_tok_s"]
        return result
    finally:
        engine.shutdown()


def run_launched(args: argparse.Namespace) -> int:
    """Start, measure and stop a server per engine mode; then the offline pass; print and save."""
    from pagedllm.entrypoints.openai.bench_serving import format_table, level_prompts, run_levels

    engine_argv = _engine_argv(args)
    rows: list[dict] = []
    for mode, front_ends in server_variants(args.engine_modes, args.api_server_counts):
        proc, base = start_server(engine_argv, mode, front_ends)
        try:
            args.base_url = base
            for row in run_levels(args):
                row["engine_process"] = mode
                row["api_server_count"] = front_ends
                rows.append(row)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
    offline = None
    top = max(int(x) for x in str(args.concurrency).split(",") if x.strip())
    if not args.no_offline:
        prompts = level_prompts(args, top)
        if prompts and isinstance(prompts[0], str):
            raise ValueError("the offline pass needs token-id prompts: add --prompt-ids lo,hi")
        offline = offline_pass(engine_argv, prompts, args.max_tokens)
        for row in rows:
            if row["concurrency"] == top:
                row["offline_ratio"] = row["output_tok_s"] / offline["output_tok_s"]
                row["itl_p50_vs_offline"] = row["p50_itl_ms"] / offline["p50_itl_ms"]
    print(format_table(rows))
    broken = sum(r["failed"] for r in rows)
    summary = {"broken_streams": broken, "offline": offline}
    print(json.dumps(summary, indent=2))
    if args.out:
        meta = {"engine_argv": engine_argv, "max_tokens": args.max_tokens,
                "engine_modes": args.engine_modes, "api_server_counts": args.api_server_counts,
                "prompt_ids": args.prompt_ids, "concurrency": args.concurrency,
                "num_prompts": args.num_prompts, "repeat": args.repeat,
                "time": time.strftime("%Y-%m-%d %H:%M:%S"), "pid": os.getpid()}  # fmt: skip
        with open(args.out, "w") as f:
            json.dump({"config": meta, "results": rows, **summary}, f, indent=2)
    return 0 if broken == 0 else 1
