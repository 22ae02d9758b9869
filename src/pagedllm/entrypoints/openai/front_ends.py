"""``pagedllm serve --api-server-count N``: N HTTP front-end processes over one engine core.

One front-end process (uvicorn, JSON, tokenizing, decoding, SSE framing) falls behind the
engine at hundreds of streams; several share the load. The process that runs ``pagedllm serve``
becomes a supervisor that serves nothing itself:

1. it binds the listening address with ``SO_REUSEPORT`` (resolving ``--port 0``) and keeps that
   socket bound but never listening, so the port stays reserved;
2. it starts the engine-core process with N output sockets (``core_client.start_core``);
3. it spawns N front ends; front end ``i`` binds output socket ``i``, waits for the core's
   ``ready``, joins the core as client ``i`` (``AsyncMPEngine.connect``: the core sends each
   request's batches to the front end that added it) and runs its own uvicorn on its own
   ``SO_REUSEPORT`` socket on the same address: the kernel spreads connections over them;
4. once every front end listens it prints ``pagedllm: serving MODEL on http://HOST:PORT``;
5. it supervises: SIGTERM/SIGINT are forwarded (as SIGTERM) to the front ends, which drain as a
   single server does; once they have exited it stops the core. Any child that exits on its own
   is a failure: the others are stopped the same way and the supervisor exits 1. A dead core is
   also seen by every front end at once (a pidfd on the core), which fails its streams and
   exits 1. Front ends and core die with the supervisor (``PR_SET_PDEATHSIG``): a SIGKILLed
   server leaves no orphans.

Per front end: the admission cap (``--max-waiting-requests``) and the latency histograms of
``/metrics`` (label ``front_end``); the engine series of ``/metrics`` are the core's, the same
on every front end. Engine stats lines are logged by front end 0 only.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import shutil
import signal
import sys
import time
from multiprocessing.connection import wait
from typing import Any

logger = logging.getLogger("pagedllm.server")

_POLL_S = 0.5
_CORE_STOP_S = 30.0


def run_front_ends(args: argparse.Namespace, config: Any) -> int:
    """The supervisor: core + ``args.api_server_count`` front ends; returns the exit code."""
    import zmq

    from pagedllm.engine import core_protocol as wire
    from pagedllm.engine.core_client import start_core, start_without_main
    from pagedllm.entrypoints.openai.http_protocol import make_server_socket

    count = args.api_server_count
    reserved = make_server_socket(args.host, args.port, reuse_port=True)
    host, port = reserved.getsockname()[:2]
    stop = _StopFlag()
    core, addresses, workdir = start_core(config, count, args.log_level)
    ctx = mp_context()
    fronts: list[Any] = []
    ready: list[Any] = []
    for i in range(count):
        receiver, sender = ctx.Pipe(duplex=False)
        front = ctx.Process(
            target=front_end_main,
            args=(args, addresses, i, core.pid, host, port, sender),
            name=f"pagedllm-api-server-{i}",
        )
        start_without_main(front)
        sender.close()
        fronts.append(front)
        ready.append(receiver)
    zctx = zmq.Context()
    commands = zctx.socket(zmq.PUSH)
    commands.setsockopt(zmq.LINGER, 1000)
    commands.connect(addresses.commands)
    try:
        failed = _supervise(core, fronts, ready, stop, host, port)
        _stop_front_ends(fronts, args.shutdown_timeout)
        if core.is_alive():
            commands.send_multipart([wire.SHUTDOWN, b""])
            core.join(_CORE_STOP_S)
        if core.is_alive():
            logger.warning("the engine core did not stop in %g s: killing it", _CORE_STOP_S)
            core.kill()
            core.join(5.0)
        bad = [f"{f.name} ({f.exitcode})" for f in fronts if f.exitcode != 0]
        if bad:
            logger.error("front ends that exited with an error: %s", ", ".join(bad))
        return 1 if failed or bad else 0
    finally:
        for proc in (*fronts, core):
            if proc.is_alive():
                proc.kill()
        commands.close(linger=0)
        zctx.term()
        reserved.close()
        shutil.rmtree(workdir, ignore_errors=True)


def mp_context() -> Any:
    """spawn: fresh interpreters (no forked CUDA, thread or event-loop state)."""
    return multiprocessing.get_context("spawn")


class _StopFlag:
    """Set by SIGTERM/SIGINT; the supervisor's loop checks it between waits."""

    def __init__(self) -> None:
        self.signal: int | None = None
        signal.signal(signal.SIGTERM, self._set)
        signal.signal(signal.SIGINT, self._set)

    def _set(self, sig: int, _frame: Any) -> None:  # noqa: ANN401 - a signal frame
        self.signal = sig


def _supervise(core: Any, fronts: list[Any], ready: list[Any], stop: _StopFlag,
               host: str, port: int) -> bool:  # fmt: skip
    """Wait for the front ends to listen, then for a signal or a child's exit.
    True when a child exited on its own (a failure)."""
    waiting = dict(enumerate(ready))
    model = ""
    while stop.signal is None:
        children = [core.sentinel, *(f.sentinel for f in fronts)]
        for obj in wait([*children, *waiting.values()], timeout=_POLL_S):
            if obj in children:
                dead = core if obj == core.sentinel else fronts[children.index(obj) - 1]
                logger.error("%s exited (status %s): stopping the server", dead.name,
                             dead.exitcode)  # fmt: skip
                return True
            index = next(i for i, conn in waiting.items() if conn is obj)
            try:
                model = obj.recv()
            except EOFError:
                continue  # its process exited: the sentinel reports it
            del waiting[index]
            obj.close()
            if not waiting:
                print(f"pagedllm: serving {model} on http://{host}:{port} "
                      f"({len(fronts)} front-end processes)", flush=True)  # fmt: skip
                print(f"pagedllm: live KV page dashboard at http://{host}:{port}/dashboard",
                      flush=True)  # fmt: skip
    logger.info("signal %d: draining %d front ends", stop.signal, len(fronts))
    return False


def _stop_front_ends(fronts: list[Any], grace: float) -> None:
    """SIGTERM each live front end (it drains for ``grace`` s); wait, then kill stragglers."""
    for front in fronts:
        if front.is_alive():
            front.terminate()
    deadline = time.monotonic() + grace + 15.0  # its drain, uvicorn's margin, its exit
    for front in fronts:
        front.join(max(0.0, deadline - time.monotonic()))
        if front.is_alive():
            logger.warning("%s did not stop in time: killing it", front.name)
            front.kill()
            front.join(5.0)


def front_end_main(args: argparse.Namespace, addresses: Any, index: int, core_pid: int,
                   host: str, port: int, ready: Any) -> None:  # fmt: skip
    """Process entry point of front end ``index``: join the core, serve on the shared port."""
    from pagedllm.engine.core_client import AsyncMPEngine
    from pagedllm.engine.core_proc import _die_with_parent
    from pagedllm.entrypoints.openai.http_protocol import make_server_socket
    from pagedllm.entrypoints.openai.server import serve_on, server_limits

    _die_with_parent(addresses.parent_pid)
    # Ctrl-C reaches the whole process group; the supervisor turns it into our SIGTERM
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=args.log_level.upper(),
        format=f"%(asctime)s %(levelname)s %(name)s[{index}]: %(message)s",
    )
    try:
        engine = AsyncMPEngine.connect(addresses, index, core_pid, **server_limits(args))
    except Exception as exc:  # noqa: BLE001 - the core failed or died while starting
        logger.error("front end %d could not join the engine core: %s", index, exc)
        sys.exit(1)
    sock = make_server_socket(host, port, reuse_port=True)

    def started(model_name: str) -> None:
        ready.send(model_name)
        ready.close()

    sys.exit(serve_on(args, engine, sock, started, front_end=index))
