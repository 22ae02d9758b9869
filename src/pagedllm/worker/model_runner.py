"""Runs the model for one step plan: swaps and copies, forward, sampling.

The runner owns the model, the KV pages (through ``CacheEngine``), the attention backend and
the row sampler. It never changes request state: it reads the plan (and the requests the plan
carries) and returns what it sampled. It is the single-device ``Executor``
(``worker/executor.py``); its seams live in their own modules: KV sizing (``kv_sizing.py``),
warm-up and graphs (``warmup.py``), input layout (``input_batch.py``, ``multi_step.py``) and
sampling (``row_sampling.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from pagedllm.attention.kv_quant import default_kv_scale, is_fp8, resolve_kv_cache_dtype
from pagedllm.attention.metadata import ForwardContext, set_forward_context
from pagedllm.config import EngineConfig
from pagedllm.core.scheduler_output import SchedulerOutput
from pagedllm.layers.attention import Attention
from pagedllm.loader import ModelSource
from pagedllm.models.registry import build_model
from pagedllm.structured.manager import StructuredOutputManager
from pagedllm.worker import kv_sizing, warmup
from pagedllm.worker.cache_engine import CacheEngine, KVCacheSpec, kv_cache_layout
from pagedllm.worker.cuda_graphs import CudaGraphRunner
from pagedllm.worker.device import resolve_device, resolve_dtype
from pagedllm.worker.input_batch import GroupTableRows, ModelInputs, prepare_inputs
from pagedllm.worker.multi_step import advance_decode_inputs, inputs_from_prev
from pagedllm.worker.pending import PendingStep
from pagedllm.worker.row_sampling import RowSampler

logger = logging.getLogger(__name__)


class ModelRunner:
    """One model on one device with its paged KV cache."""

    def __init__(self, config: EngineConfig, source: ModelSource) -> None:
        self.config = config
        self.device = resolve_device(config.model.device)
        self.dtype = resolve_dtype(config.model.dtype, source.hf_config, self.device)
        torch.manual_seed(config.model.seed)
        self.model = build_model(source.hf_config, self.dtype, self.device)
        self.model.load_weights(self._weights(source))
        self.model.eval()
        self.vocab_size = int(source.hf_config["vocab_size"])
        self.block_size = config.cache.block_size
        cache_dtype = resolve_kv_cache_dtype(config.cache.kv_cache_dtype, self.dtype)
        # KV cache groups by attention type (core/kv_cache_spec.py); the engine builds the
        # same layout for the scheduler
        self.kv_layout = kv_cache_layout(source.hf_config, config.cache.disable_hybrid_kv_cache)
        slots = self.kv_layout.layer_slots(self.model.num_layers)
        self.layer_group = [g for g, _ in slots]
        self.kv_spec = KVCacheSpec(
            num_layers=self.model.num_layers,
            block_size=self.block_size,
            num_kv_heads=self.model.num_kv_heads,
            head_dim=self.model.head_dim,
            dtype=cache_dtype,
            layer_tensor=tuple(j for _, j in slots) if self.kv_layout.num_groups > 1 else None,
        )
        if is_fp8(cache_dtype):  # each attention layer passes its scales with its pages
            for layer in self.model.modules():
                if isinstance(layer, Attention):
                    layer.kv_scale = default_kv_scale(self.device)
        self.backend = self._make_backend()
        # grammar matchers of constrained sequences (the engine validates through it too)
        self.structured = StructuredOutputManager(source.tokenizer, self.vocab_size)
        # through the model attribute: tensor parallelism swaps compute_logits after init_cache
        self.rows = RowSampler(
            lambda hidden: self.model.compute_logits(hidden),
            self.device,
            self.vocab_size,
            self.structured,
        )
        self.cache: CacheEngine | None = None
        self.graphs: CudaGraphRunner | None = None
        self.group_rows = GroupTableRows()  # hybrid models' table rows, kept between steps

    # ----------------------------------------------------------------- set-up
    def _weights(self, source: ModelSource):  # noqa: ANN202 - an iterator of (name, tensor)
        """Checkpoint tensors; dummy weights are drawn on the device in the runtime dtype
        (an 8B model's random weights would take minutes and 32 GB as float32 on the host)."""
        if source.load_format == "dummy":
            from pagedllm.loader.dummy import iter_dummy_weights

            return iter_dummy_weights(source.hf_config, dtype=self.dtype, device=self.device)
        return source.weights()

    def _make_backend(self) -> object:
        if self.device.type == "cuda":
            from pagedllm.attention.triton_backend import TritonAttentionBackend

            return TritonAttentionBackend(max_model_len=self.config.scheduler.max_model_len)
        from pagedllm.attention.torch_backend import TorchAttentionBackend

        return TorchAttentionBackend()

    def determine_num_blocks(self) -> tuple[int, int]:
        """Size the KV pool: explicit blocks, explicit bytes, or free memory after profiling."""
        return kv_sizing.determine_num_blocks(
            self.config, self.kv_spec, self.model, self.backend, self.device
        )

    def init_cache(self, num_blocks: int, num_cpu_blocks: int) -> None:
        """Allocate the KV pages (after determine_num_blocks), then capture decode graphs."""
        self.cache = CacheEngine(self.kv_spec, num_blocks, num_cpu_blocks, self.device)
        if self.device.type != "cuda":
            return
        warmup.warm_up(
            self.model, self.backend, self.cache, self.rows.sampler, self.block_size,
            self.vocab_size,
        )  # fmt: skip
        if not self.config.model.enforce_eager:
            sched = self.config.scheduler
            self.graphs = warmup.capture_graphs(
                self.model, self.backend, self.cache, sched.max_num_seqs, sched.max_model_len,
                self.block_size, self.layer_group, self.kv_layout.num_groups,
            )  # fmt: skip

    def measure_swap_bandwidth(self) -> float:
        """Bytes per second of a device<->host page copy (AUTO preemption's cost model)."""
        assert self.cache is not None, "init_cache() must run first"
        return self.cache.measure_swap_bandwidth()

    # ------------------------------------------------------------------ steps
    @torch.inference_mode()
    def launch(self, plan: SchedulerOutput, prev: PendingStep | None = None) -> PendingStep:
        """Carry out swaps and copies, queue the model on the plan's tokens, and sample.

        Returns before the sampled tokens reach the host (``PendingStep.collect`` waits).
        ``prev`` is the still-running step whose sampled tokens are this step's inputs where a
        scheduled request has a ``prev_row`` (async scheduling).
        """
        assert self.cache is not None, "init_cache() must run before launch()"
        # the KV manager's order (core/scheduler_output.py): a block swapped out or written
        # back may be reused as a CoW target, a swap-in or load may land in a freed block
        self.cache.apply_moves(plan)
        pending = PendingStep()
        if not plan.scheduled:
            return pending
        inputs = prepare_inputs(plan, self.block_size, self.device, self.group_rows)
        if plan.scheduled[0].prev_row is not None:
            prev_ids = None if prev is None else prev.last_token_ids
            prev_rows = 0 if prev is None else len(prev.row_ids)
            inputs = inputs_from_prev(plan, inputs, prev_ids, prev_rows)
        if plan.num_steps > 1:
            self._decode_steps(plan, inputs, pending, prev)
            return pending
        hidden = self.forward(inputs)
        self.rows.prompt_logprobs(plan, inputs, hidden, pending.result)
        self.rows.sample(plan, inputs, hidden, pending, prev)
        return pending

    def forward(self, inputs: ModelInputs) -> torch.Tensor:
        """The model on laid-out inputs (a captured graph for a pure-decode batch)."""
        meta = inputs.metadata
        if (
            self.graphs is not None
            and meta.num_decodes == meta.num_seqs
            and self.graphs.can_run(meta.num_seqs, meta.max_seq_len)
        ):
            return self.graphs.run(inputs.input_ids, inputs.positions, meta, inputs.group_metadata)
        context = ForwardContext(
            meta, self.cache.kv_caches, self.backend, inputs.group_metadata, self.layer_group
        )
        with set_forward_context(context):
            return self.model(inputs.input_ids, inputs.positions)

    def _decode_steps(
        self,
        plan: SchedulerOutput,
        inputs: ModelInputs,
        pending: PendingStep,
        prev: PendingStep | None,
    ) -> None:
        """``plan.num_steps`` decode steps back to back, one host sync (at collect)."""
        row_requests = [plan.requests[s.request_id] for s in plan.scheduled]
        batch = self.rows.batch(row_requests, prev)
        pending.sampling_batch = batch
        sampled: list[torch.Tensor] = []
        for step in range(plan.num_steps):
            if step:
                inputs = advance_decode_inputs(inputs, sampled[-1], self.block_size)
            logits = self.model.compute_logits(self.forward(inputs))
            sampled.append(self.rows.sampler(logits, batch).token_ids)
        pending.track([r.request_id for r in row_requests], torch.stack(sampled, dim=1))

    def release(self, request_ids: Sequence[str]) -> None:
        """Forget per-request state (seeded generators) of finished requests."""
        self.rows.release(request_ids)
        self.structured.release(request_ids)

    def shutdown(self) -> None:
        """Nothing to stop on one device (the ``Executor`` protocol's hook)."""
