"""How many streamed tokens per second the HTTP front end delivers, independent of any model.

A fake engine core (this file's ``fake_core``) speaks the real core protocol
(``engine/core_protocol.py``): it announces ``ready`` with the bundled SmolLM2 tokenizer,
accepts ``add``/``abort``, and every ``--step-ms`` emits one token-id delta for each of its
running requests (ids of ordinary English text, so the front end's detokenizer does real work),
finishing each at its ``max_tokens``. Real front ends (``front_ends.front_end_main``: uvicorn,
FastAPI, ``AsyncMPEngine``, the SSE handlers), ``--api-servers`` of them on one
``SO_REUSEPORT`` port, serve ``--streams`` concurrent streamed ``/v1/completions`` from
lightweight raw-socket client processes that only count bytes (they must not be the
bottleneck).

Reported per front-end count: delivered output tok/s, SSE events/s (below tok/s when a
behind stream's deltas were coalesced into one event), the gap between a stream's reads
(p50/p99), and the front ends' own CPU time per token (from /proc, robust on a loaded host):
``1e6 / us_per_token`` is what one front end could deliver with a core of its own.

    PYTHONPATH=src python3 benchmarks/frontend_hotpath.py --streams 256 --api-servers 1,2,4 \
        --step-ms 5 --duration 20 --client-procs 4 --out frontend.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import pickle
import re
import shutil
import signal
import statistics
import tempfile
import time
from pathlib import Path

_TEXT = (
    "Paged attention keeps the key and value cache in fixed-size pages, so a request only "
    "holds the memory its tokens need and many requests share one pool. The scheduler admits "
    "work while pages are free, and the front end streams every new token to its client. "
)


# ----------------------------------------------------------------------------- fake core
def fake_core(addresses, step_s: float, preset: str | None = None) -> None:
    """Process target: the core protocol with a token per running request per step.
    ``preset``: that preset's tokenizer (a placeholder spelling id i as ``<i>``, as
    ``bench serve --preset NAME --dummy`` serves), else the bundled SmolLM2's."""
    import msgspec
    import zmq

    from pagedllm.engine import core_protocol as wire
    from pagedllm.engine.core_proc import core_sockets
    from pagedllm.entrypoints.startup import StartupSummary
    from pagedllm.loader.source import load_model_source

    if preset:
        from pagedllm.benchmark.workloads import preset_path

        source = load_model_source(preset_path(preset), "dummy")
        pool = list(range(1000, 1512))
    else:
        source = load_model_source(None)
        pool = list(source.tokenizer.encode(_TEXT * 4, add_special_tokens=False))
    tokenizer = source.tokenizer
    _ctx, commands, outs = core_sockets(addresses)
    summary = StartupSummary(source.name, "fake core", "fake", "cpu", "none", 1, 16, 0, 4096,
                             False, 0, 0, "recompute", 0.0)  # fmt: skip
    info = {"model_name": source.name, "max_model_len": 4096, "vocab_size": 49152,
            "tokenizer": tokenizer, "config": None, "summary": summary, "pid": os.getpid()}  # fmt: skip
    payload = pickle.dumps(info)
    for sock in outs:
        sock.send_multipart([b"ready", payload])
    running: dict[str, list] = {}  # id -> [client, produced, max_tokens, arrival]
    replies: list[list] = [[] for _ in outs]
    next_step = time.monotonic()
    while True:
        while True:
            try:
                kind, body = commands.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            if kind == wire.ADD:
                client, rid, _p, params, _ids, _arrival, _detok = wire.decode_add(body)
                running[rid] = [client, 0, params.max_tokens, time.monotonic()]
                replies[client].append(wire.AddReply(rid))
            elif kind == wire.ABORT:
                for rid in msgspec.msgpack.decode(body):
                    running.pop(rid, None)
            elif kind == wire.SHUTDOWN:
                return
        per_client: list[list] = [[] for _ in outs]
        now = time.monotonic()
        for rid, state in list(running.items()):
            client, produced, max_tokens, arrival = state
            state[1] = produced + 1
            done = state[1] >= max_tokens
            completion = wire.WireCompletion(0, [pool[produced % len(pool)]], "", None, None,
                                             "length" if done else None, None, None)  # fmt: skip
            metrics = (arrival, arrival, arrival, now if done else None, 0, 0)
            per_client[client].append(wire.WireOutput(rid, [completion], done, None, None, metrics))
            if done:
                del running[rid]
        for client, sock in enumerate(outs):
            if per_client[client] or replies[client]:
                batch = wire.CoreBatch(per_client[client], replies[client], None, None, None,
                                       [], now)  # fmt: skip
                replies[client] = []
                sock.send(wire.ENCODER.encode(batch), copy=False)
        next_step += step_s
        delay = next_step - time.monotonic()
        if delay > 0:
            commands.poll(delay * 1000)
        else:
            next_step = time.monotonic()


# ------------------------------------------------------------------------------- clients
async def _stream_loop(host: str, port: int, body: bytes, deadline: float, out: dict) -> None:
    while time.monotonic() < deadline:
        sent = time.monotonic()
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(body)
        last = None
        data = bytearray()
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                break
            now = time.monotonic()
            if last is not None:
                out["gaps"].append(now - last)
            elif b"data: " in chunk:
                out["ttfts"].append(now - sent)
            if b"data: " in chunk or last is not None:
                last = now
            data += chunk
        writer.close()
        match = re.search(rb'"completion_tokens":(\d+)', data)
        if match is None or b"[DONE]" not in data:
            out["failed"] += 1
            continue
        out["tokens"] += int(match.group(1))
        out["events"] += data.count(b"data: ") - 2  # minus the usage chunk and [DONE]
        out["requests"] += 1


def client_main(host: str, port: int, streams: int, max_tokens: int, seconds: float, q) -> None:
    payload = json.dumps({"prompt": "Tell me about paged attention", "max_tokens": max_tokens,
                          "ignore_eos": True, "stream": True,
                          "stream_options": {"include_usage": True}}).encode()  # fmt: skip
    body = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(payload)) + payload  # fmt: skip
    out = {"tokens": 0, "events": 0, "requests": 0, "failed": 0, "gaps": [], "ttfts": []}

    async def run() -> None:
        deadline = time.monotonic() + seconds
        await asyncio.gather(*(_stream_loop(host, port, body, deadline, out)
                               for _ in range(streams)))  # fmt: skip

    start, cpu = time.monotonic(), time.process_time()
    asyncio.run(run())
    out["start"], out["end"], out["cpu"] = start, time.monotonic(), time.process_time() - cpu
    q.put(out)


def profiled_front_end(path: str, *args) -> None:
    """Front end under cProfile (its event loop: the main thread); stats written at exit."""
    import cProfile

    from pagedllm.entrypoints.openai.front_ends import front_end_main

    profile = cProfile.Profile()
    try:
        profile.runcall(front_end_main, *args)
    except SystemExit:
        pass
    finally:
        profile.dump_stats(path)


# --------------------------------------------------------------------------- orchestration
def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(count: int, args: argparse.Namespace) -> dict:
    """One run with ``count`` front ends: start, warm up, measure, stop."""
    from pagedllm.engine.core_proc import CoreAddresses
    from pagedllm.entrypoints.openai.front_ends import front_end_main
    from pagedllm.entrypoints.openai.http_protocol import make_server_socket
    from pagedllm.entrypoints.openai.server import add_serve_args

    ctx = multiprocessing.get_context("spawn")
    workdir = tempfile.mkdtemp(prefix="pagedllm-fe-bench-")
    addresses = CoreAddresses(f"ipc://{workdir}/commands",
                              [f"ipc://{workdir}/out{i}" for i in range(count)], os.getpid())  # fmt: skip
    core = ctx.Process(target=fake_core, args=(addresses, args.step_ms / 1e3, args.preset))
    core.start()
    reserved = make_server_socket("127.0.0.1", 0, reuse_port=True)
    port = reserved.getsockname()[1]
    parser = argparse.ArgumentParser()
    add_serve_args(parser)
    serve_args = parser.parse_args(["--log-level", "warning", "--max-waiting-requests", "0",
                                    "--log-stats-interval", "0"])  # fmt: skip
    fronts, pipes = [], []
    for i in range(count):
        receiver, sender = ctx.Pipe(duplex=False)
        fe_args = (serve_args, addresses, i, core.pid, "127.0.0.1", port, sender)
        if args.profile and i == 0:
            front = ctx.Process(target=profiled_front_end, args=(args.profile, *fe_args))
        else:
            front = ctx.Process(target=front_end_main, args=fe_args)
        front.start()
        fronts.append(front)
        pipes.append(receiver)
    try:
        for pipe in pipes:
            if not pipe.poll(120):
                raise RuntimeError("a front end did not start")
            pipe.recv()
        q = ctx.Queue()
        procs = max(1, args.client_procs)
        share = [args.streams // procs + (i < args.streams % procs) for i in range(procs)]
        # warm-up: a short run, not measured
        _clients(ctx, q, port, [max(1, s // 4) for s in share], args.max_tokens, 2.0)
        cpu0 = [_cpu_seconds(f.pid) for f in fronts]
        core_cpu0 = _cpu_seconds(core.pid)
        parts = _clients(ctx, q, port, share, args.max_tokens, args.duration)
        cpu = [_cpu_seconds(f.pid) - c for f, c in zip(fronts, cpu0, strict=True)]
        core_cpu = _cpu_seconds(core.pid) - core_cpu0
    finally:
        for front in fronts:
            os.kill(front.pid, signal.SIGTERM)
        for front in fronts:
            front.join(30)
        core.kill()
        core.join(5)
        reserved.close()
        shutil.rmtree(workdir, ignore_errors=True)
    wall = max(p["end"] for p in parts) - min(p["start"] for p in parts)
    tokens = sum(p["tokens"] for p in parts)
    gaps = sorted(g for p in parts for g in p["gaps"])
    ttfts = [t for p in parts for t in p["ttfts"]]
    return {
        "api_servers": count, "streams": args.streams, "step_ms": args.step_ms,
        "offered_tok_s": args.streams * 1e3 / args.step_ms,
        "output_tok_s": tokens / wall, "events_s": sum(p["events"] for p in parts) / wall,
        "requests": sum(p["requests"] for p in parts),
        "failed": sum(p["failed"] for p in parts),
        "ttft_p50_ms": statistics.median(ttfts) * 1e3 if ttfts else None,
        "read_gap_p50_ms": statistics.median(gaps) * 1e3 if gaps else None,
        "read_gap_p99_ms": gaps[int(0.99 * (len(gaps) - 1))] * 1e3 if gaps else None,
        "front_end_cpu_s": cpu, "core_cpu_s": core_cpu, "wall_s": wall,
        "client_cpu_s": sum(p["cpu"] for p in parts),
        "front_end_us_per_token": 1e6 * sum(cpu) / tokens if tokens else None,
    }  # fmt: skip


def _clients(ctx, q, port: int, share: list[int], max_tokens: int, seconds: float) -> list:
    procs = [ctx.Process(target=client_main, args=("127.0.0.1", port, s, max_tokens, seconds, q))
             for s in share if s > 0]  # fmt: skip
    for p in procs:
        p.start()
    parts = [q.get(timeout=seconds + 300) for _ in procs]
    for p in procs:
        p.join(10)
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=64, help="concurrent streams")
    parser.add_argument("--max-tokens", type=int, default=128, help="tokens per request")
    parser.add_argument("--step-ms", type=float, default=5.0, help="the fake core's step time")
    parser.add_argument("--api-servers", default="1", help="front-end counts to run, e.g. 1,2,4")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds measured per run")
    parser.add_argument("--client-procs", type=int, default=1, help="client processes")
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    parser.add_argument("--profile", default=None, help="cProfile front end 0 into this file")
    parser.add_argument("--preset", default=None, help="this preset's (placeholder) tokenizer")
    args = parser.parse_args()
    rows = []
    for count in [int(x) for x in args.api_servers.split(",")]:
        row = measure(count, args)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
