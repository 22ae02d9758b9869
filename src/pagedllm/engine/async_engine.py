"""An asyncio front over the one synchronous ``LLMEngine`` (for the HTTP server).

The engine is not thread-safe and its ``step()`` blocks for tens to hundreds of milliseconds,
so exactly one background thread owns it: it drains a thread-safe command queue (add / abort)
between steps, runs ``step()`` while there is work, and hands each step's outputs to the event
loop with one ``call_soon_threadsafe`` call. The event loop never touches the engine, and there is
no second scheduler: batching is the engine's own continuous batching.

Each request gets a ``RequestStream`` (an ``asyncio.Queue`` read on the loop). A stream that is
closed before its request finished (client disconnect, cancelled task) aborts the request, so
its KV blocks are freed within a step.

Admission and deadlines live here too, on the loop: ``max_waiting_requests`` bounds the requests
accepted but not yet producing output (``check_admission`` raises ``EngineOverloadedError``, a
429 in the server); ``request_timeout`` aborts a request that has not finished that many seconds
after it arrived (``RequestTimeoutError``, its blocks freed within a step); ``begin_shutdown``
fails whatever is still running when the shutdown grace period ends (``EngineDeadError``), so
every client gets an answer before the server closes.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from pagedllm.engine.errors import (  # noqa: F401 - re-exported: the server imports them here
    EngineDeadError,
    EngineOverloadedError,
    EngineStepError,
    RequestTimeoutError,
)
from pagedllm.engine.outputs import RequestOutput
from pagedllm.engine.request_stream import RequestStream
from pagedllm.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

# How long the idle engine thread sleeps on its command queue before rechecking for shutdown.
_IDLE_WAIT_S = 0.1


@dataclass(slots=True)
class _Add:
    request_id: str
    prompt: str | list[int] | None
    params: SamplingParams
    prompt_token_ids: list[int] | None
    arrival_time: float
    done: Callable[[BaseException | None], None]


@dataclass(slots=True)
class _Abort:
    request_ids: list[str]


@dataclass(slots=True)
class _Timing:
    """Loop-side timestamps of one request, for TTFT / inter-token / end-to-end histograms."""

    arrival: float
    last_token: float | None = None
    num_tokens: int = 0
    ttft: float | None = None


class AsyncLLMEngine:
    """Runs one ``LLMEngine`` in a background thread and streams its outputs to asyncio.

    ``metrics`` (optional) receives ``observe_ttft``, ``observe_itl``, ``observe_e2e`` calls with
    seconds (see ``pagedllm.metrics.ServerMetrics``).
    """

    def __init__(
        self,
        engine: Any,
        metrics: Any | None = None,
        max_waiting_requests: int | None = None,
        request_timeout: float | None = None,
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.max_waiting_requests = max_waiting_requests
        self.request_timeout = request_timeout
        self.tokenizer = engine.tokenizer
        self._commands: queue.Queue[_Add | _Abort | None] = queue.Queue()
        self._streams: dict[str, RequestStream] = {}
        self._timing: dict[str, _Timing] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._accepting = True
        self._stats: Any = None
        self._stats_lock = threading.Lock()
        self.last_error: str | None = None
        # called on the engine thread after each stats refresh as hook(engine, stats): the
        # periodic stats log and the dashboard's page snapshot (entrypoints/)
        self.stats_hooks: list[Callable[[Any, Any], None]] = []
        self.request_logger: Any | None = None  # --log-requests (entrypoints/stats_logger.py)

    @classmethod
    def from_config(cls, config: Any, metrics: Any | None = None, **limits: Any) -> AsyncLLMEngine:
        """Build the engine (loads the model: slow) and wrap it (``limits``: see __init__)."""
        from pagedllm.engine.gc_freeze import freeze_startup_objects
        from pagedllm.engine.llm_engine import LLMEngine

        engine = LLMEngine.from_config(config)
        freeze_startup_objects(engine)  # the in-process server: one engine for its life
        return cls(engine, metrics=metrics, **limits)

    # ----------------------------------------------------------------- properties
    @property
    def model_name(self) -> str:
        return str(getattr(self.engine, "model_name", "pagedllm"))

    @property
    def max_model_len(self) -> int:
        value = getattr(self.engine, "max_model_len", None)
        if value is None:
            value = self.engine.config.scheduler.max_model_len
        return int(value)

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def num_in_flight(self) -> int:
        return len(self._streams)

    @property
    def num_waiting(self) -> int:
        """Requests accepted (or being accepted) that have produced no output yet."""
        return sum(1 for stream in self._streams.values() if not stream.started)

    def check_admission(self, count: int = 1) -> None:
        """Raise ``EngineOverloadedError`` if ``count`` more waiting requests exceed the cap."""
        if not self._accepting:
            raise EngineDeadError("the server is shutting down")
        cap = self.max_waiting_requests
        if cap is None:
            return
        waiting = self.num_waiting
        if waiting + count > cap:
            raise EngineOverloadedError(
                f"the server is overloaded: {waiting} requests are waiting (limit {cap}); "
                "retry later",
                retry_after=1,
            )

    def stats(self) -> Any:
        """The engine's stats as of its last step (read without touching the engine)."""
        with self._stats_lock:
            return self._stats

    # ------------------------------------------------------------------ requests
    def start(self) -> None:
        """Start the engine thread on the running event loop (idempotent)."""
        if self.is_running:
            return
        self._loop = asyncio.get_running_loop()
        self._stop.clear()
        self._refresh_stats()
        self._thread = threading.Thread(target=self._run, name="pagedllm-engine", daemon=True)
        self._thread.start()

    async def add_request(
        self,
        request_id: str,
        prompt: str | list[int] | None,
        params: SamplingParams,
        prompt_token_ids: list[int] | None = None,
    ) -> RequestStream:
        """Queue a request; raises the engine's ValueError/TypeError for bad input."""
        if not self._accepting:
            raise EngineDeadError("the server is shutting down")
        self.start()
        loop = asyncio.get_running_loop()
        accepted: asyncio.Future[None] = loop.create_future()

        def done(exc: BaseException | None) -> None:
            # Called from the engine thread: resolve the future on the loop.
            loop.call_soon_threadsafe(_resolve, accepted, exc)

        now = time.monotonic()
        deadline = None if self.request_timeout is None else now + self.request_timeout
        stream = RequestStream(self, request_id, deadline)
        # Registered before the add so the first step's outputs always find the stream.
        self._streams[request_id] = stream
        self._timing[request_id] = _Timing(arrival=now)
        self._send_add(_Add(request_id, prompt, params, prompt_token_ids, time.time(), done))
        try:
            await accepted
        except BaseException:
            self._streams.pop(request_id, None)
            self._timing.pop(request_id, None)
            stream.finished = True
            if not accepted.done() or accepted.cancelled():
                self._send_abort([request_id])
            raise
        if self.request_logger is not None:
            self.request_logger.received(request_id, prompt, prompt_token_ids, params)
        return stream

    async def generate(
        self,
        prompt: str | list[int] | None,
        params: SamplingParams,
        request_id: str,
        prompt_token_ids: list[int] | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Stream a request's outputs; aborts it if the consumer stops early."""
        stream = await self.add_request(request_id, prompt, params, prompt_token_ids)
        try:
            async for output in stream:
                yield output
        finally:
            stream.close()

    async def abort(self, request_id: str) -> None:
        """Abort a request (no-op if unknown or finished)."""
        stream = self._streams.get(request_id)
        if stream is not None:
            stream.close()
        else:
            self._send_abort([request_id])

    def _abort_now(self, request_id: str) -> None:
        self._streams.pop(request_id, None)
        self._timing.pop(request_id, None)
        self._send_abort([request_id])

    # The way to the engine: a queue to the engine thread here; a socket to the engine-core
    # process in ``AsyncMPEngine`` (engine/core_client.py). Both are called on the loop.
    def _send_add(self, cmd: _Add) -> None:
        self._commands.put(cmd)

    def _send_abort(self, request_ids: list[str]) -> None:
        self._commands.put(_Abort(request_ids))

    # ------------------------------------------------------------------ shutdown
    def begin_shutdown(self, grace: float) -> None:
        """Stop accepting now; fail what still runs after ``grace`` seconds (on the loop).

        Called when the server is told to stop (SIGTERM), before the HTTP server's own grace
        period ends, so every stream still gets an error event and ``[DONE]`` and every other
        client a JSON error instead of a cut connection.
        """
        self._accepting = False
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(loop.call_later, grace, self._fail_remaining)

    def _fail_remaining(self) -> None:
        for rid, stream in list(self._streams.items()):
            # Abort first, then hand the consumer the reason (it is not marked finished, so it
            # still reads the error).
            self._abort_now(rid)
            stream._put(EngineDeadError("the server shut down before the request finished"))

    async def drain(self, timeout: float) -> None:
        """Stop accepting requests, let in-flight ones finish for ``timeout`` s, abort the rest."""
        self._accepting = False
        deadline = time.monotonic() + timeout
        while self._streams and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self._fail_remaining()
        self.shutdown()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop the engine thread (after its current step)."""
        self._accepting = False
        self._stop.set()
        self._commands.put(None)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._thread = None
        stop_workers = getattr(self.engine, "shutdown", None)
        if stop_workers is not None:
            stop_workers()  # tensor-parallel worker processes

    # ---------------------------------------------------------- engine thread
    def _run(self) -> None:
        """The engine loop: commands between steps, one step at a time, outputs to the loop."""
        in_flight: set[str] = set()
        while not self._stop.is_set():
            busy = self.engine.has_unfinished_requests()
            self._drain_commands(in_flight, block=not busy)
            if self._stop.is_set():
                break
            if not self.engine.has_unfinished_requests():
                self._refresh_stats()
                continue
            try:
                outputs = self.engine.step()
            except Exception as exc:  # noqa: BLE001 - a failing step must not end serving
                logger.exception(
                    "engine step failed; failing %d in-flight requests", len(in_flight)
                )
                self._fail_all(in_flight, exc)
                continue
            for out in outputs:
                if out.finished:
                    in_flight.discard(out.request_id)
            self._refresh_stats()
            if outputs:
                self._call_loop(self._dispatch, outputs, time.monotonic())

    def _drain_commands(self, in_flight: set[str], block: bool) -> None:
        try:
            cmd = self._commands.get(timeout=_IDLE_WAIT_S) if block else self._commands.get_nowait()
        except queue.Empty:
            return
        while True:
            if isinstance(cmd, _Add):
                try:
                    self.engine.add_request(
                        cmd.request_id,
                        cmd.prompt,
                        cmd.params,
                        prompt_token_ids=cmd.prompt_token_ids,
                        arrival_time=cmd.arrival_time,
                    )
                except Exception as exc:  # noqa: BLE001 - reported to the caller
                    cmd.done(exc)
                else:
                    in_flight.add(cmd.request_id)
                    cmd.done(None)
            elif isinstance(cmd, _Abort):
                live = [rid for rid in cmd.request_ids if rid in in_flight]
                in_flight.difference_update(live)
                if live:
                    try:
                        self.engine.abort_request(live)
                    except Exception:  # noqa: BLE001
                        logger.exception("abort_request(%s) failed", live)
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                return

    def _fail_all(self, in_flight: set[str], exc: Exception) -> None:
        """After a failed step: abort everything in flight and tell their streams why."""
        ids = sorted(in_flight)
        in_flight.clear()
        if ids:
            try:
                self.engine.abort_request(ids)
            except Exception:  # noqa: BLE001 - the engine may be in a bad state already
                logger.exception("abort after a failed step also failed")
        message = f"engine step failed: {type(exc).__name__}: {exc}"
        self.last_error = message
        self._refresh_stats()
        self._call_loop(self._fail_streams, ids, message)

    def _refresh_stats(self) -> None:
        try:
            stats = self.engine.stats()
        except Exception:  # noqa: BLE001 - metrics must never break serving
            logger.exception("engine.stats() failed")
            return
        self._publish_stats(stats)

    def _publish_stats(self, stats: Any) -> None:
        """Keep ``stats`` for ``stats()`` and run the hooks (stats log, dashboard)."""
        with self._stats_lock:
            self._stats = stats
        for hook in self.stats_hooks:
            try:
                hook(self.engine, stats)
            except Exception:  # noqa: BLE001 - logging and dashboards must never break serving
                logger.exception("stats hook %r failed", hook)

    def _call_loop(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop closed between the check and the call
            pass

    # ------------------------------------------------------------ loop side
    def _dispatch(self, outputs: list[RequestOutput], step_time: float) -> None:
        for out in outputs:
            self._observe(out, step_time)
            stream = self._streams.get(out.request_id)
            if stream is not None:
                stream.started = True
                stream._put(out)

    def _observe(self, out: RequestOutput, now: float) -> None:
        timing = self._timing.get(out.request_id)
        if timing is None:
            return
        new_tokens = 0
        for c in out.outputs:  # a loop, not max() over a generator: once per request per step
            if len(c.delta_token_ids) > new_tokens:
                new_tokens = len(c.delta_token_ids)
        if new_tokens and self.metrics is not None:
            if timing.last_token is None:
                self.metrics.observe_ttft(now - timing.arrival)
            else:
                self.metrics.observe_itl((now - timing.last_token) / new_tokens)
        if new_tokens:
            if timing.last_token is None:
                timing.ttft = now - timing.arrival
            timing.last_token = now
            timing.num_tokens += new_tokens
        if out.finished:
            self._timing.pop(out.request_id, None)
            if self.metrics is not None:
                self.metrics.observe_e2e(now - timing.arrival)
            if self.request_logger is not None:
                self.request_logger.finished(out, timing.ttft, now - timing.arrival)

    def _fail_streams(self, ids: list[str], message: str) -> None:
        for rid in ids:
            self._timing.pop(rid, None)
            stream = self._streams.pop(rid, None)
            if stream is not None:
                stream._put(EngineStepError(message))


def _resolve(fut: asyncio.Future[None], exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is None:
        fut.set_result(None)
    else:
        fut.set_exception(exc)
