"""A tensor-parallel worker process (ranks 1..N-1): its model shard, its KV pool, no scheduler.

Started by ``worker/executor.py`` with the 'spawn' context. It receives commands over a pipe
from rank 0 (the engine process) and runs the same forward as rank 0 on the same
``SchedulerOutput``; the collectives inside the model do the rest. It never samples and never
sends per-step replies (rank 0 waits on the collectives instead). It exits when told to, when
the pipe closes, or when its parent process is gone (a watchdog thread checks the parent pid).
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from typing import Any

# commands (the first item of each pipe message)
CMD_NUM_BLOCKS = "num_blocks"
CMD_INIT_CACHE = "init_cache"
CMD_EXECUTE = "execute"
CMD_SHUTDOWN = "shutdown"
# replies
REPLY_HELLO = "hello"
REPLY_READY = "ready"
REPLY_OK = "ok"
REPLY_ERROR = "error"

_PARENT_POLL_S = 1.0


def _watch_parent(parent_pid: int) -> None:
    """Exit at once when the parent dies (even while blocked inside a collective)."""

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            time.sleep(_PARENT_POLL_S)

    threading.Thread(target=watch, name="pagedllm-parent-watch", daemon=True).start()


def worker_main(
    rank: int,
    world_size: int,
    init_method: str,
    backend: str,
    config: Any,
    conn: Any,
    parent_pid: int,
    num_threads: int,
) -> None:
    """Entry point of a worker process (must stay importable at module level for 'spawn')."""
    _watch_parent(parent_pid)
    if backend == "nccl":
        os.environ["NCCL_NVLS_ENABLE"] = "0"  # never NVLink multicast
    try:
        conn.send((REPLY_HELLO, os.getpid()))
        runner = _start(rank, world_size, init_method, backend, config, num_threads)
        conn.send((REPLY_READY, None))
    except BaseException:  # noqa: BLE001 - report anything, then exit
        _send_error(conn, rank)
        return
    try:
        _serve(runner, conn)
    except BaseException:  # noqa: BLE001
        _send_error(conn, rank)
    finally:
        from pagedllm.parallel.state import destroy_tensor_parallel

        destroy_tensor_parallel()


def _start(
    rank: int, world_size: int, init_method: str, backend: str, config: Any, num_threads: int
) -> Any:
    import torch

    from pagedllm.loader import load_model_source
    from pagedllm.parallel.state import init_tensor_parallel
    from pagedllm.worker.model_runner import ModelRunner

    if num_threads > 0:
        torch.set_num_threads(num_threads)
    if config.model.device.startswith("cuda"):
        torch.cuda.set_device(torch.device(config.model.device))
    init_tensor_parallel(rank, world_size, init_method, backend)
    spec = config.model
    source = load_model_source(spec.model, spec.load_format, spec.tokenizer)
    return ModelRunner(config, source)


def _serve(runner: Any, conn: Any) -> None:
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # rank 0 is gone
            return
        command = message[0]
        if command == CMD_EXECUTE:
            execute_follower(runner, message[1])
        elif command == CMD_NUM_BLOCKS:
            conn.send((REPLY_OK, runner.determine_num_blocks()))
        elif command == CMD_INIT_CACHE:
            runner.init_cache(message[1], message[2])
            conn.send((REPLY_OK, None))
        elif command == CMD_SHUTDOWN:
            return
        else:
            raise RuntimeError(f"unknown command {command!r} from rank 0")


def execute_follower(runner: Any, output: Any) -> None:
    """Rank 0's ``ModelRunner.launch`` minus sampling: same cache moves, same forward, then
    join the LM-head calls rank 0 makes (``parallel/protocol.py``)."""
    import torch

    from pagedllm.parallel.protocol import serve_logits
    from pagedllm.worker.input_batch import prepare_inputs

    with torch.inference_mode():
        cache = runner.cache
        cache.apply_moves(output)
        if not output.scheduled:
            return
        runner.forward(prepare_inputs(output, runner.block_size, runner.device))
        serve_logits(runner.model.compute_logits, runner.dtype, runner.device)


def _send_error(conn: Any, rank: int) -> None:
    try:
        conn.send((REPLY_ERROR, f"tensor-parallel rank {rank} failed:\n{traceback.format_exc()}"))
    except Exception:  # noqa: BLE001 - the parent may be gone already
        pass
