"""``AsyncMPEngine``: the server's async engine with the engine core in its own process.

Same interface and behaviour as ``AsyncLLMEngine`` (admission, deadlines, shutdown grace, the
streams, metrics and stats hooks are inherited), but instead of an engine thread in this
interpreter the engine runs in ``engine/core_proc.py``: adds and aborts go out on a ZeroMQ
socket from the event loop; a reader thread receives the core's per-step batches (token-id
deltas), and the loop turns them into ``RequestOutput`` s (``output_processor.py``: decoding,
text, logprob lists) and hands them to the streams. So HTTP, JSON, tokenizing, decoding and
SSE framing never share an interpreter (and its GIL) with the scheduler and the executor.

Faults: the reader polls the core process's sentinel next to its socket, so a dead core is
seen at once: ``is_running`` turns false (``/health`` answers 503), every in-flight request and
pending add fails with ``EngineDeadError``, and the ``on_core_death`` callbacks run (the server
then exits with a non-zero code for its supervisor to restart it: one place that decides,
no half-restarted state).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import select
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import msgspec
import zmq

from pagedllm.engine import core_protocol as wire
from pagedllm.engine.async_engine import AsyncLLMEngine, _Add
from pagedllm.engine.core_proc import CoreAddresses, run_engine_core
from pagedllm.engine.errors import EngineDeadError
from pagedllm.engine.output_processor import FrontRequest, decodes_in_front
from pagedllm.engine.validation import resolve_prompt

logger = logging.getLogger("pagedllm.server")

_START_TIMEOUT_S = 600.0  # loading a large model and compiling kernels can take minutes


class CoreInfo:
    """What the front end knows of the engine (the core announced it): the ``engine`` of an
    ``AsyncMPEngine``, with the attributes the server reads from an in-process engine."""

    def __init__(self, info: dict[str, Any], client: AsyncMPEngine) -> None:
        self.model_name: str = info["model_name"]
        self.max_model_len: int = int(info["max_model_len"])
        self.vocab_size: int = int(info["vocab_size"])
        self.tokenizer = info["tokenizer"]
        self.config = info["config"]
        self.summary = info["summary"]
        self.pid: int = info["pid"]
        self._client = client
        self._snapshot: dict[str, Any] | None = None

    def kv_snapshot(self) -> dict[str, Any] | None:
        """The latest page snapshot the core sent; asks for a fresh one (dashboard hook)."""
        self._client._send(wire.SNAPSHOT, msgspec.msgpack.encode(self._client.client_index))
        return self._snapshot

    def shutdown(self) -> None:
        """The core process is stopped by ``AsyncMPEngine.shutdown``."""


class AsyncMPEngine(AsyncLLMEngine):
    """An ``AsyncLLMEngine`` whose engine runs in an engine-core process."""

    def __init__(
        self,
        process: Any,
        context: zmq.Context,
        commands: zmq.Socket,
        outputs: zmq.Socket,
        info: dict[str, Any],
        workdir: str,
        client_index: int = 0,
        metrics: Any | None = None,
        **limits: Any,
    ) -> None:
        self.client_index = client_index
        super().__init__(CoreInfo(info, self), metrics=metrics, **limits)
        self.process = process
        self._ctx = context
        self._cmd = commands
        self._out = outputs
        self._workdir = workdir
        self._front: dict[str, FrontRequest] = {}
        self._adds: dict[str, Callable[[BaseException | None], None]] = {}
        self._reader: threading.Thread | None = None
        self._closing = threading.Event()
        self._dead = False
        self._owns_process = True
        self.on_core_death: list[Callable[[str], None]] = []

    @classmethod
    def from_config(
        cls, config: Any, metrics: Any | None = None, log_level: str = "INFO", **limits: Any
    ) -> AsyncMPEngine:
        """Start the engine-core process, wait until its engine is ready, connect to it."""
        process, addresses, workdir = start_core(config, 1, log_level)
        ctx = zmq.Context()
        outputs = ctx.socket(zmq.PULL)
        outputs.bind(addresses.outputs[0])
        try:
            info = wait_ready(outputs, process)
        except BaseException:
            _stop_process(process, 5.0)
            outputs.close(linger=0)
            ctx.term()
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        commands = _command_socket(ctx, addresses.commands)
        return cls(process, ctx, commands, outputs, info, workdir, metrics=metrics, **limits)

    @classmethod
    def connect(
        cls, addresses: CoreAddresses, client_index: int, core_pid: int,
        metrics: Any | None = None, **limits: Any,
    ) -> AsyncMPEngine:  # fmt: skip
        """Join a core another process started (``--api-server-count``: one front end of
        several). This front end owns output socket ``client_index``; it neither stops the core
        on shutdown nor removes its socket directory (the supervisor does both)."""
        process = CoreRef(core_pid)
        ctx = zmq.Context()
        outputs = ctx.socket(zmq.PULL)
        outputs.bind(addresses.outputs[client_index])
        try:
            info = wait_ready(outputs, process)
        except BaseException:
            outputs.close(linger=0)
            ctx.term()
            process.close()
            raise
        commands = _command_socket(ctx, addresses.commands)
        engine = cls(process, ctx, commands, outputs, info, "", client_index, metrics, **limits)
        engine._owns_process = False
        return engine

    # ----------------------------------------------------------------- state
    @property
    def is_running(self) -> bool:
        return not self._dead and self.process.is_alive()

    def start(self) -> None:
        """Start the reader thread on the running event loop (idempotent)."""
        if self._reader is not None:
            return
        import asyncio

        self._loop = asyncio.get_running_loop()
        self._reader = threading.Thread(target=self._read, name="pagedllm-core-reader", daemon=True)
        self._reader.start()

    # ------------------------------------------------------------ to the core
    def _send(self, kind: bytes, payload: bytes) -> None:
        try:
            self._cmd.send_multipart([kind, payload], flags=zmq.NOBLOCK, copy=False)
        except zmq.ZMQError as exc:  # closed, or the core is gone: the death path reports it
            logger.debug("send to the engine core failed: %s", exc)

    def _send_add(self, cmd: _Add) -> None:
        if self._dead:
            cmd.done(EngineDeadError(self.last_error or "the engine core is not running"))
            return
        if cmd.request_id in self._front:
            cmd.done(ValueError(f"request id {cmd.request_id!r} is already in use"))
            return
        tokenizer = self.engine.tokenizer
        try:  # tokenize and check here: a bad prompt costs no round trip
            text, ids = resolve_prompt(
                cmd.prompt, cmd.prompt_token_ids, tokenizer, self.engine.vocab_size
            )
        except (ValueError, TypeError) as exc:
            cmd.done(exc)
            return
        here = decodes_in_front(cmd.params, tokenizer)
        self._front[cmd.request_id] = FrontRequest(text, ids, cmd.params, here, tokenizer)
        self._adds[cmd.request_id] = cmd.done
        payload = wire.encode_add(
            self.client_index, cmd.request_id, text, cmd.params, ids, cmd.arrival_time, not here
        )
        self._send(wire.ADD, payload)

    def _send_abort(self, request_ids: list[str]) -> None:
        self._send(wire.ABORT, msgspec.msgpack.encode(request_ids))

    # --------------------------------------------------------- from the core
    def _read(self) -> None:
        """Reader thread: batches to the loop; the core's exit noticed through its sentinel."""
        decoder = wire.batch_decoder()
        poller = zmq.Poller()
        poller.register(self._out, zmq.POLLIN)
        poller.register(self.process.sentinel, zmq.POLLIN)
        while not self._closing.is_set():
            try:
                events = dict(poller.poll(200))
            except zmq.ZMQError:
                return
            got = False
            while True:
                try:
                    frame = self._out.recv(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                except zmq.ZMQError:
                    return
                got = True
                self._call_loop(self._on_batch, decoder.decode(frame.buffer), time.monotonic())
            if not got and self.process.sentinel in events and not self._closing.is_set():
                self.process.join(1.0)
                self._call_loop(self._on_core_exit, self.process.exitcode)
                return

    def _on_batch(self, batch: wire.CoreBatch, received: float) -> None:
        if batch.snapshot is not None:
            self.engine._snapshot = batch.snapshot
        for reply in batch.replies:
            done = self._adds.pop(reply.request_id, None)
            if reply.error_type is not None:
                self._front.pop(reply.request_id, None)
            if done is not None:
                done(None if reply.error_type is None else wire.reply_error(reply))
        outputs = []
        for item in batch.outputs:
            front = self._front.get(item.request_id)
            if front is None:
                continue
            try:
                outputs.append(front.apply(item))
            except Exception as exc:  # noqa: BLE001 - decoding one request must not fail others
                logger.exception("output processing failed for %s", item.request_id)
                self._abort_now(item.request_id)
                self._fail_streams([item.request_id], f"{type(exc).__name__}: {exc}")
            if item.finished:
                self._front.pop(item.request_id, None)
        if outputs:
            self._dispatch(outputs, received)
        if batch.failed_ids:
            self.last_error = batch.step_error
            for rid in batch.failed_ids:
                self._front.pop(rid, None)
            self._fail_streams(batch.failed_ids, batch.step_error or "engine step failed")
        if batch.stats is not None:
            self._publish_stats(batch.stats)

    def _on_core_exit(self, exitcode: int | None) -> None:
        if self._dead or self._closing.is_set():
            return
        self._dead = True
        self._accepting = False
        how = f"exit code {exitcode}" if exitcode is not None else f"pid {self.process.pid}"
        message = f"the engine core process died ({how})"
        self.last_error = message
        logger.error("%s; failing %d in-flight requests", message, len(self._streams))
        for rid, stream in list(self._streams.items()):
            self._streams.pop(rid, None)
            self._timing.pop(rid, None)
            stream._put(EngineDeadError(message))
        adds, self._adds = self._adds, {}
        for done in adds.values():
            done(EngineDeadError(message))
        self._front.clear()
        for callback in self.on_core_death:
            callback(message)

    # ------------------------------------------------------------------ stop
    def _refresh_stats(self) -> None:
        """Stats arrive from the core; nothing to read here."""

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop the core (after its current step; only the front end that started it) and the
        reader; safe to call twice."""
        self._accepting = False
        if self._closing.is_set():
            return
        if self._owns_process and self.process.is_alive():
            self._send(wire.SHUTDOWN, b"")
        self._closing.set()
        if self._owns_process:
            _stop_process(self.process, timeout)
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(2.0)
        self._cmd.close(linger=0 if self._owns_process else 1000)  # aborts still reach the core
        self._out.close(linger=0)
        self._ctx.term()
        if self._owns_process:
            shutil.rmtree(self._workdir, ignore_errors=True)
        else:
            self.process.close()


def start_core(
    config: Any, num_clients: int, log_level: str = "INFO"
) -> tuple[Any, CoreAddresses, str]:
    """Spawn the engine-core process with ``num_clients`` output sockets (one per front end);
    returns (process, addresses, socket directory). It announces ``ready`` on every output."""
    workdir = tempfile.mkdtemp(prefix="pagedllm-core-")  # 0700: only we reach the sockets
    addresses = CoreAddresses(
        commands=f"ipc://{workdir}/commands",
        outputs=[f"ipc://{workdir}/out{i}" for i in range(num_clients)],
        parent_pid=os.getpid(),
        log_level=log_level,
    )
    # spawn: a fresh interpreter (no forked CUDA or thread state)
    process = multiprocessing.get_context("spawn").Process(
        target=run_engine_core, args=(config, addresses), name="pagedllm-engine-core"
    )
    start_without_main(process)
    return process, addresses, workdir


def _command_socket(ctx: zmq.Context, address: str) -> zmq.Socket:
    commands = ctx.socket(zmq.PUSH)
    commands.setsockopt(zmq.SNDHWM, 0)
    commands.setsockopt(zmq.LINGER, 1000)
    commands.connect(address)
    return commands


class CoreRef:
    """A core process this process did not start (so no ``multiprocessing`` sentinel): a Linux
    pidfd, readable once the process exits, polled by the reader like a sentinel."""

    exitcode = None  # only the parent can read it

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.sentinel = os.pidfd_open(pid)  # ProcessLookupError if it is gone already

    def is_alive(self) -> bool:
        return self.sentinel >= 0 and not select.select([self.sentinel], [], [], 0)[0]

    def join(self, timeout: float | None = None) -> None:
        if self.sentinel >= 0:
            select.select([self.sentinel], [], [], timeout)

    def close(self) -> None:
        if self.sentinel >= 0:
            os.close(self.sentinel)
            self.sentinel = -1


def wait_ready(outputs: zmq.Socket, process: Any) -> dict[str, Any]:
    """The core's ``ready`` announcement; raises if it fails or dies while starting."""
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if outputs.poll(200):
            kind, payload = outputs.recv_multipart()
            if kind == b"ready":
                return pickle.loads(payload)  # noqa: S301 - our own child over a private socket
            if kind == b"fail":
                raise RuntimeError(f"the engine core failed to start: {payload.decode()}")
        elif not process.is_alive():
            raise RuntimeError(
                f"the engine core process exited while starting (exit code {process.exitcode})"
            )
    raise RuntimeError(f"the engine core did not become ready in {_START_TIMEOUT_S:g} s")


def start_without_main(process: Any) -> None:
    """Start a spawn process without re-importing our ``__main__`` in it.

    spawn re-imports the parent's main module in the child (``python -m
    pagedllm.entrypoints.openai.server`` would import FastAPI into the engine core); the target
    lives in ``engine/core_proc.py`` and needs none of it, so the main module's spec and file are
    hidden while the child is prepared.
    """
    main = sys.modules["__main__"]
    saved = {k: main.__dict__[k] for k in ("__spec__", "__file__") if k in main.__dict__}
    main.__dict__["__spec__"] = None
    main.__dict__.pop("__file__", None)
    try:
        process.start()
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


def _stop_process(process: Any, timeout: float) -> None:
    process.join(timeout)
    if process.is_alive():
        logger.warning("the engine core did not stop in %g s: terminating it", timeout)
        process.kill()
        process.join(5.0)
