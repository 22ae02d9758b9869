"""Executors: what the engine calls to run a step, on one device or over tensor-parallel ranks.

The engine and the executors meet in one contract, the ``Executor`` protocol: size and
allocate the pool, ``launch(plan, prev) -> PendingStep`` (queue a step), and
``PendingStep.collect() -> StepResult`` (its tokens, ``[rows, k]``, plus logprobs). The plan is
the scheduler's ``SchedulerOutput``: rows, forks, cache moves and the requests themselves.
``create_executor(config, source)`` returns the plain ``ModelRunner`` for
``tensor_parallel_size == 1`` and a ``TensorParallelExecutor`` otherwise.

Tensor parallelism (docs/parallelism.md): this process is rank 0. It keeps the one scheduler,
runs its own model shard and samples. Ranks 1..N-1 are daemon processes started with the
'spawn' context (``worker/tp_worker.py``); each step they receive the ``SchedulerOutput`` over
a pipe (pickled once for all) and run the same forward; the collectives inside the model
(torch.distributed: NCCL between GPUs, gloo on CPU) keep the ranks in step.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import logging
import multiprocessing
import os
import socket
import time
import weakref
from collections.abc import Sequence
from multiprocessing.reduction import ForkingPickler
from typing import Any, Protocol

import torch
import torch.distributed as dist

from pagedllm.config import EngineConfig
from pagedllm.core.scheduler_output import SchedulerOutput
from pagedllm.loader import ModelSource
from pagedllm.parallel.protocol import DriverLogits
from pagedllm.parallel.sharding import check_tensor_parallel
from pagedllm.parallel.state import default_backend, destroy_tensor_parallel, init_tensor_parallel
from pagedllm.structured.manager import StructuredOutputManager
from pagedllm.worker import tp_worker
from pagedllm.worker.cache_engine import KVCacheSpec
from pagedllm.worker.device import resolve_device
from pagedllm.worker.model_runner import ModelRunner
from pagedllm.worker.pending import PendingStep

logger = logging.getLogger(__name__)

_JOIN_TIMEOUT_S = 5.0


class Executor(Protocol):
    """What the engine calls to run steps; the only way it reaches the device."""

    vocab_size: int
    kv_spec: KVCacheSpec
    device: torch.device
    dtype: torch.dtype  # the model's
    structured: StructuredOutputManager  # grammar matchers (the engine validates through it)

    def determine_num_blocks(self) -> tuple[int, int]:
        """(device blocks, CPU swap blocks) the pool may have."""

    def init_cache(self, num_blocks: int, num_cpu_blocks: int) -> None:
        """Allocate the pages (and warm up / capture graphs)."""

    def measure_swap_bandwidth(self) -> float:
        """Bytes per second of a page swap (AUTO preemption)."""

    def launch(self, plan: SchedulerOutput, prev: PendingStep | None = None) -> PendingStep:
        """Queue a step; ``prev``: the in-flight step a continuation's inputs come from."""

    def release(self, request_ids: Sequence[str]) -> None:
        """Forget per-request state of finished requests."""

    def shutdown(self) -> None:
        """Stop worker processes; idempotent."""


def create_executor(config: EngineConfig, source: ModelSource) -> Executor:
    """The executor for ``config.parallel.tensor_parallel_size`` (1: a plain ``ModelRunner``).

    Tensor parallelism runs single steps only: ``EngineConfig`` turns multi-step rounds and
    async scheduling off for it, since the workers do not see rank 0's sampled tokens."""
    if config.parallel.tensor_parallel_size == 1:
        return ModelRunner(config, source)
    return TensorParallelExecutor(config, source)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _startup_timeout() -> float:
    return float(os.environ.get("PAGEDLLM_TP_TIMEOUT_S", "600"))


def _rank_devices(device: torch.device, tp: int) -> list[str]:
    """One device per rank: CPU for all, or consecutive GPUs from the asked-for one."""
    if device.type != "cuda":
        return ["cpu"] * tp
    base = device.index or 0
    available = torch.cuda.device_count()
    if base + tp > available:
        raise ValueError(
            f"tensor_parallel_size={tp} needs {tp} GPUs from cuda:{base}, but only "
            f"{available} are visible; lower tensor_parallel_size"
        )
    return [f"cuda:{base + rank}" for rank in range(tp)]


def _stop_workers(
    procs: list[multiprocessing.process.BaseProcess],
    conns: list[Any],
    restore_threads: int,
) -> None:
    """Ask each worker to exit, then terminate/kill stragglers; leave rank 0's group.

    Runs once: from ``shutdown()``, when the executor is garbage collected, or at exit.
    """
    for conn in conns:
        try:
            conn.send((tp_worker.CMD_SHUTDOWN,))
        except Exception:  # noqa: BLE001 - a dead worker has no pipe to write to
            pass
    deadline = time.monotonic() + _JOIN_TIMEOUT_S
    for proc in procs:
        proc.join(max(deadline - time.monotonic(), 0.1))
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
            proc.join(2.0)
        if proc.is_alive():
            proc.kill()
            proc.join(2.0)
    for conn in conns:
        conn.close()
    destroy_tensor_parallel()
    if restore_threads > 0:
        torch.set_num_threads(restore_threads)


class TensorParallelExecutor:
    """Rank 0 of a tensor-parallel group: its runner plus the worker processes it owns."""

    def __init__(self, config: EngineConfig, source: ModelSource) -> None:
        tp = config.parallel.tensor_parallel_size
        check_tensor_parallel(source.hf_config, tp)  # a clear error before any process starts
        if dist.is_initialized():
            gc.collect()  # an unreferenced engine's finalizer may still hold the group
        if dist.is_initialized():
            raise RuntimeError(
                "torch.distributed is already initialized in this process: close the other "
                "tensor-parallel engine first (engine.runner.shutdown())"
            )
        device = resolve_device(config.model.device)
        devices = _rank_devices(device, tp)
        backend = default_backend(device)
        if backend == "nccl":
            os.environ["NCCL_NVLS_ENABLE"] = "0"  # never NVLink multicast; workers inherit it
        self.tensor_parallel_size = tp
        self._procs: list[multiprocessing.process.BaseProcess] = []
        self._conns: list[Any] = []
        self._broken: str | None = None
        threads = 0
        prev_threads = 0
        if device.type == "cpu":
            # the ranks share this host's cores: split them instead of oversubscribing
            threads = max(1, len(os.sched_getaffinity(0)) // tp)
            prev_threads = torch.get_num_threads()
            torch.set_num_threads(threads)
        self._finalizer = weakref.finalize(
            self, _stop_workers, self._procs, self._conns, prev_threads
        )
        try:
            self._start(config, source, tp, devices, backend, threads)
        except BaseException:
            self.shutdown()
            raise

    def _start(
        self,
        config: EngineConfig,
        source: ModelSource,
        tp: int,
        devices: list[str],
        backend: str,
        threads: int,
    ) -> None:
        init_method = f"tcp://127.0.0.1:{_free_port()}"
        ctx = multiprocessing.get_context("spawn")
        for rank in range(1, tp):
            worker_config = copy.deepcopy(config)
            worker_config.model.device = devices[rank]
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(
                target=tp_worker.worker_main,
                args=(
                    rank,
                    tp,
                    init_method,
                    backend,
                    worker_config,
                    child_end,
                    os.getpid(),
                    threads,
                ),
                name=f"pagedllm-tp-rank{rank}",
                daemon=True,  # terminated with this process; the worker also watches its parent
            )
            proc.start()
            child_end.close()  # so the worker's death reads as EOF here, and ours there
            self._procs.append(proc)
            self._conns.append(parent_end)
        timeout = _startup_timeout()
        self._collect(tp_worker.REPLY_HELLO, timeout)
        if backend == "nccl":
            torch.cuda.set_device(torch.device(devices[0]))
        init_tensor_parallel(0, tp, init_method, backend)
        self.driver = ModelRunner(config, source)
        self._collect(tp_worker.REPLY_READY, timeout)
        logger.info("tensor parallelism: %d ranks over %s (%s)", tp, ", ".join(devices), backend)

    # ----------------------------------------------------------- runner interface
    @property
    def vocab_size(self) -> int:
        return self.driver.vocab_size

    @property
    def kv_spec(self) -> KVCacheSpec:
        return self.driver.kv_spec  # rank 0's shard: what one rank's pages hold

    @property
    def device(self) -> torch.device:
        return self.driver.device

    @property
    def dtype(self) -> torch.dtype:
        return self.driver.dtype

    @property
    def model(self) -> torch.nn.Module:
        """Rank 0's shard of the model (for inspection; the engine never uses it)."""
        return self.driver.model

    @property
    def structured(self) -> StructuredOutputManager:
        return self.driver.structured  # rank 0 samples, so rank 0 holds the grammar matchers

    def determine_num_blocks(self) -> tuple[int, int]:
        """Every rank sizes its own pool (GPUs profile together); rank 0 takes the minimum."""
        self._broadcast((tp_worker.CMD_NUM_BLOCKS,))
        mine = self.driver.determine_num_blocks()
        theirs = self._collect(tp_worker.REPLY_OK, _startup_timeout())
        sizes = [mine, *theirs]
        return min(s[0] for s in sizes), min(s[1] for s in sizes)

    def init_cache(self, num_blocks: int, num_cpu_blocks: int) -> None:
        """Rank 0's decision goes to every rank; each allocates its own heads' pages."""
        self._broadcast((tp_worker.CMD_INIT_CACHE, num_blocks, num_cpu_blocks))
        self.driver.init_cache(num_blocks, num_cpu_blocks)
        self._collect(tp_worker.REPLY_OK, _startup_timeout())
        model = self.driver.model
        # from now on rank 0 alone decides which rows get logits (parallel/protocol.py)
        self._logits = DriverLogits(model.compute_logits, self.driver.dtype, self.driver.device)
        model.compute_logits = self._logits

    def measure_swap_bandwidth(self) -> float:
        return self.driver.measure_swap_bandwidth()

    def launch(self, plan: SchedulerOutput, prev: PendingStep | None = None) -> PendingStep:
        """Send the step to the workers, queue it here too, then end the LM-head calls.

        The workers get the plan without its requests (they only run the forward)."""
        assert prev is None and plan.num_steps == 1, "tensor parallelism runs single steps"
        if self._broken is not None:
            raise RuntimeError(f"the tensor-parallel group is down: {self._broken}")
        self._broadcast((tp_worker.CMD_EXECUTE, dataclasses.replace(plan, requests={})))
        try:
            pending = self.driver.launch(plan)
        except BaseException as exc:
            self._recover(plan, exc)
            raise
        if plan.scheduled:
            self._logits.done()
        return pending

    def release(self, request_ids: Sequence[str]) -> None:
        self.driver.release(request_ids)

    def shutdown(self) -> None:
        """Stop the worker processes and leave the process group (idempotent)."""
        self._finalizer()

    close = shutdown

    @property
    def workers(self) -> list[multiprocessing.process.BaseProcess]:
        """The worker processes (ranks 1..N-1), for monitoring and tests."""
        return list(self._procs)

    def __enter__(self) -> TensorParallelExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # ---------------------------------------------------------------- internals
    def _broadcast(self, message: tuple) -> None:
        data = bytes(ForkingPickler.dumps(message))  # pickled once for every worker
        try:
            for conn in self._conns:
                conn.send_bytes(data)
        except (BrokenPipeError, OSError) as exc:
            self._broken = self._worker_errors() or f"a worker's pipe is closed ({exc})"
            raise RuntimeError(f"the tensor-parallel group is down: {self._broken}") from exc

    def _collect(self, expected: str, timeout: float) -> list[Any]:
        """One ``expected`` reply per worker; a worker's error or death raises RuntimeError."""
        replies = []
        deadline = time.monotonic() + timeout
        for rank, (conn, proc) in enumerate(zip(self._conns, self._procs, strict=True), start=1):
            while not conn.poll(0.05):
                if not proc.is_alive():
                    raise RuntimeError(
                        f"tensor-parallel rank {rank} exited (code {proc.exitcode}) during start-up"
                    )
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"tensor-parallel rank {rank} did not answer {expected!r} in {timeout:.0f}"
                        " s (PAGEDLLM_TP_TIMEOUT_S raises the limit)"
                    )
            try:
                kind, payload = conn.recv()
            except EOFError as exc:
                raise RuntimeError(f"tensor-parallel rank {rank} closed its pipe") from exc
            if kind == tp_worker.REPLY_ERROR:
                raise RuntimeError(payload)
            if kind != expected:
                raise RuntimeError(f"rank {rank} answered {kind!r}, expected {expected!r}")
            replies.append(payload)
        return replies

    def _worker_errors(self) -> str | None:
        """Tracebacks the workers sent, and which ones died."""
        problems = []
        for rank, (conn, proc) in enumerate(zip(self._conns, self._procs, strict=True), start=1):
            try:
                while conn.poll(0):
                    kind, payload = conn.recv()
                    if kind == tp_worker.REPLY_ERROR:
                        problems.append(payload)
            except (EOFError, OSError):
                pass
            if not proc.is_alive():
                problems.append(f"rank {rank} exited with code {proc.exitcode}")
        return "\n".join(problems) or None

    def _recover(self, output: SchedulerOutput, exc: BaseException) -> None:
        """After a failed step: if every rank is alive, end the step's LM-head loop so the
        workers wait for the next one; otherwise the group is down for good."""
        time.sleep(0.05)  # a dying worker's report may be in flight
        problems = self._worker_errors()
        if problems is not None:
            self._broken = problems
            logger.error("tensor-parallel worker failure: %s", problems)
            return
        if output.scheduled and getattr(self, "_logits", None) is not None:
            try:
                self._logits.done()
            except Exception as again:  # noqa: BLE001
                self._broken = f"{type(exc).__name__}: {exc}; then {again}"
