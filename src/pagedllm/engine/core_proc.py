"""The engine-core process: one ``LLMEngine`` in a busy loop that never waits on HTTP.

It owns the scheduler, the KV manager and the executor (and so the grammars of structured
outputs, which live where the sampler is). Between steps it drains every queued command (add,
abort, snapshot, stop) without blocking; while requests run it steps back to back; each step's
outputs go out as one ``CoreBatch`` per front end (token-id deltas, ``core_protocol.py``).
When idle it blocks on its command socket for up to ``_IDLE_POLL_MS`` and sends stats every
``_STATS_EVERY_S``. It imports no web framework.

Lifetime: it exits on the front end's ``stop`` command, and on its parent's death (Linux
``PR_SET_PDEATHSIG`` and a parent-pid check between steps), so a SIGKILLed server leaves no
orphan holding the GPU. It ignores SIGINT and SIGTERM: a Ctrl-C or a SIGTERM sent to the whole
process group reaches the front end too, which drains its requests and then stops the core.
"""

from __future__ import annotations

import ctypes
import logging
import os
import pickle
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec
import zmq

from pagedllm.engine import core_protocol as wire
from pagedllm.engine.outputs import RequestOutput

logger = logging.getLogger("pagedllm.core")

_IDLE_POLL_MS = 100
_STATS_EVERY_S = 0.1


@dataclass
class CoreAddresses:
    """The sockets: one command socket (the core binds) and one output socket per front end."""

    commands: str
    outputs: list[str]
    parent_pid: int = 0
    log_level: str = "INFO"
    extra: dict[str, Any] = field(default_factory=dict)


def run_engine_core(config: Any, addresses: CoreAddresses) -> None:
    """Process entry point (``multiprocessing`` spawn target)."""
    _die_with_parent(addresses.parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(
        level=addresses.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    ctx, commands, outs = core_sockets(addresses)
    try:
        core = EngineCore(config, commands, outs, addresses.parent_pid)
    except BaseException as exc:  # noqa: BLE001 - report why start-up failed, then exit
        message = f"{type(exc).__name__}: {exc}"
        logger.exception("engine core failed to start")
        for sock in outs:
            sock.send_multipart([b"fail", message.encode()])
        sys.exit(3)
    leaked = [m for m in ("fastapi", "uvicorn", "starlette") if m in sys.modules]
    if leaked:  # the core must stay free of the web stack (its import time, its memory)
        logger.warning("the engine core imported %s", ", ".join(leaked))
    core.announce()
    # The loop runs on a thread of its own, as the in-process server's engine thread does:
    # torch's CPU ops issued from the main thread measured up to 25x slower on a loaded 2-core
    # host (its OpenMP team spins against everything else), from a second thread not.
    loop = threading.Thread(target=core.run, name="pagedllm-engine-core")
    try:
        loop.start()
        loop.join()
    finally:
        core.engine.shutdown()
        for sock in outs:
            sock.close(linger=1000)
        commands.close(linger=0)
        ctx.term()


def core_sockets(addresses: CoreAddresses) -> tuple[zmq.Context, zmq.Socket, list[zmq.Socket]]:
    """The core's end of the wire: its bound command socket and one connected output socket
    per front end (a connect queues what is sent until that front end binds)."""
    ctx = zmq.Context()
    commands = ctx.socket(zmq.PULL)
    commands.bind(addresses.commands)
    outs = []
    for address in addresses.outputs:
        sock = ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.SNDHWM, 0)  # never drop or block on a slow front end's batches
        sock.setsockopt(zmq.LINGER, 2000)
        sock.connect(address)
        outs.append(sock)
    return ctx, commands, outs


class EngineCore:
    """The loop around one engine; ``run()`` returns when stopped or orphaned."""

    def __init__(
        self, config: Any, commands: zmq.Socket, outs: list[zmq.Socket], parent_pid: int
    ) -> None:
        from pagedllm.engine.gc_freeze import freeze_startup_objects
        from pagedllm.engine.llm_engine import LLMEngine

        start = time.perf_counter()
        self.engine = LLMEngine.from_config(config)
        freeze_startup_objects(self.engine)  # one engine for the process's life
        self.ready_seconds = time.perf_counter() - start
        self.commands = commands
        self.outs = outs
        self.parent_pid = parent_pid
        self.owner: dict[str, int] = {}  # request id -> front end index
        self.replies: list[list[wire.AddReply]] = [[] for _ in outs]
        self.want_snapshot: set[int] = set()
        self.stopping = False
        self._last_stats = 0.0

    def announce(self) -> None:
        """Tell every front end what it needs: names, sizes, the tokenizer (pickled once)."""
        from pagedllm.entrypoints.startup import summarize

        engine = self.engine
        info = {
            "model_name": engine.model_name,
            "max_model_len": engine.max_model_len,
            "vocab_size": engine.vocab_size,
            "tokenizer": engine.tokenizer,
            "config": engine.config,
            "summary": summarize(engine, self.ready_seconds),
            "pid": os.getpid(),
        }
        payload = pickle.dumps(info, protocol=pickle.HIGHEST_PROTOCOL)
        for sock in self.outs:
            sock.send_multipart([b"ready", payload])

    # ------------------------------------------------------------------ loop
    def run(self) -> None:
        engine = self.engine
        while not self.stopping:
            busy = engine.has_unfinished_requests()
            if not busy:
                if not self.commands.poll(_IDLE_POLL_MS):
                    if self._orphaned():
                        return
                    self._send_idle_stats()
                    continue
            self._drain_commands()
            if self.stopping or not engine.has_unfinished_requests():
                self._flush(outputs=[])
                continue
            try:
                outputs = engine.step()
            except Exception as exc:  # noqa: BLE001 - a failing step must not end serving
                logger.exception("engine step failed; failing every request in flight")
                self._fail_all(exc)
                continue
            self._flush(outputs)
            if self._orphaned():
                return

    def _drain_commands(self) -> None:
        while True:
            try:
                kind, payload = self.commands.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if kind == wire.ADD:
                self._add(payload)
            elif kind == wire.ABORT:
                ids = [rid for rid in msgspec.msgpack.decode(payload) if rid in self.owner]
                if ids:
                    self.engine.abort_request(ids)
            elif kind == wire.SNAPSHOT:
                self.want_snapshot.add(int(msgspec.msgpack.decode(payload)))
            elif kind == wire.SHUTDOWN:
                self.stopping = True

    def _add(self, payload: bytes) -> None:
        client, rid, prompt, params, ids, arrival, detokenize = wire.decode_add(payload)
        try:
            self.engine.add_request(
                rid, prompt, params, prompt_token_ids=ids, arrival_time=arrival,
                detokenize=detokenize,
            )  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - the front end raises it for the caller
            self.replies[client].append(wire.error_reply(rid, exc))
            return
        self.owner[rid] = client
        self.replies[client].append(wire.AddReply(rid))

    def _flush(self, outputs: list[RequestOutput], error: str | None = None,
               failed: dict[int, list[str]] | None = None) -> None:  # fmt: skip
        """One batch per front end with news: its outputs, add replies, stats."""
        per_client: list[list[wire.WireOutput]] = [[] for _ in self.outs]
        for out in outputs:
            client = self.owner.get(out.request_id)
            if client is None:
                continue
            if out.finished:
                del self.owner[out.request_id]
            per_client[client].append(to_wire(out))
        now = time.monotonic()
        stats = None
        if now - self._last_stats >= _STATS_EVERY_S / 4:
            stats = self.engine.stats()
            self._last_stats = now
        for client, sock in enumerate(self.outs):
            ids = (failed or {}).get(client, [])
            if not (per_client[client] or self.replies[client] or stats or ids):
                continue
            snapshot = None
            if client in self.want_snapshot:
                self.want_snapshot.discard(client)
                snapshot = self.engine.kv_snapshot()
            batch = wire.CoreBatch(
                per_client[client], self.replies[client], stats, snapshot,
                error if ids else None, ids, now,
            )  # fmt: skip
            self.replies[client] = []
            sock.send(wire.ENCODER.encode(batch), copy=False)

    def _send_idle_stats(self) -> None:
        if time.monotonic() - self._last_stats >= _STATS_EVERY_S:
            self._flush([])

    def _fail_all(self, exc: Exception) -> None:
        ids = list(self.owner)
        try:
            self.engine.abort_request(ids)
            self.engine.step()  # collect the aborts' outputs so no block stays held
        except Exception:  # noqa: BLE001 - the engine may be in a bad state already
            logger.exception("abort after a failed step also failed")
        failed: dict[int, list[str]] = {}
        for rid in ids:
            failed.setdefault(self.owner.pop(rid), []).append(rid)
        self._flush([], f"engine step failed: {type(exc).__name__}: {exc}", failed)

    def _orphaned(self) -> bool:
        if self.parent_pid and os.getppid() != self.parent_pid:
            logger.error("the server process is gone: the engine core exits")
            return True
        return False


def to_wire(out: RequestOutput) -> wire.WireOutput:
    """A ``RequestOutput`` as its delta: what changed this step, nothing the front end has."""
    beam = any(c.score is not None for c in out.outputs)
    completions = [
        wire.WireCompletion(
            c.index,
            # beam search's one output holds whole sequences, not deltas
            c.token_ids if beam else c.delta_token_ids,
            c.text if beam else c.delta_text,
            c.delta_logprobs,
            c.cumulative_logprob,
            c.finish_reason,
            c.stop_reason,
            c.score,
        )
        for c in out.outputs
    ]
    m = out.metrics
    metrics = None
    if m is not None:
        metrics = (m.arrival_time, m.first_scheduled_time, m.first_token_time,
                   m.finished_time, m.num_cached_tokens, m.num_preemptions)  # fmt: skip
    return wire.WireOutput(
        out.request_id, completions, out.finished, out.error, out.prompt_logprobs, metrics
    )


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL us when the parent dies (no orphan holding the device)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        return
    if parent_pid and os.getppid() != parent_pid:
        os._exit(1)  # the parent died before the prctl took effect
