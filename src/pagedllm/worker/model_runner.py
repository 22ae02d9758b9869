"""Runs the model for one SchedulerOutput: swaps and copies, forward, sampling.

The runner owns the model, the KV pages (through ``CacheEngine``), the attention backend and
the sampler. It never changes request state: it reads requests and returns what it sampled.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from pagedllm.attention.metadata import ForwardContext, build_metadata, set_forward_context
from pagedllm.config import EngineConfig
from pagedllm.core.request import Request
from pagedllm.core.scheduler import SchedulerOutput
from pagedllm.engine.errors import RequestFailure
from pagedllm.engine.outputs import Logprobs
from pagedllm.layers.sampler import Sampler, SamplingBatch, compute_prompt_logprobs
from pagedllm.loader import ModelSource
from pagedllm.models.registry import build_model
from pagedllm.sampling_params import SamplingParams
from pagedllm.structured.manager import StructuredOutputManager
from pagedllm.transfer import to_device
from pagedllm.worker.cache_engine import CacheEngine, KVCacheSpec, kv_cache_layout
from pagedllm.worker.cuda_graphs import CudaGraphRunner
from pagedllm.worker.device import resolve_device, resolve_dtype
from pagedllm.worker.input_batch import ModelInputs, prepare_inputs
from pagedllm.worker.multi_step import advance_decode_inputs
from pagedllm.worker.pending import PendingStep

logger = logging.getLogger(__name__)

_CPU_DEFAULT_KV_BYTES = 1 << 30


@dataclass(slots=True)
class ModelOutput:
    """What one step produced, keyed by request id."""

    sampled: dict[str, int] = field(default_factory=dict)
    logprobs: dict[str, Logprobs] = field(default_factory=dict)
    sampled_logprob: dict[str, float] = field(default_factory=dict)
    prompt_logprobs: dict[str, list[Logprobs]] = field(default_factory=dict)
    sampled_multi: dict[str, list[int]] = field(default_factory=dict)  # multi-step rounds


class ModelRunner:
    """One model on one device with its paged KV cache."""

    supports_async_scheduling = True  # launch() + PendingStep.collect()

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
        cache_dtype = self.dtype if config.cache.cache_dtype == "auto" else _dtype(config)
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
        self.backend = self._make_backend()
        self.sampler = Sampler()
        self.cache: CacheEngine | None = None
        self.graphs: CudaGraphRunner | None = None
        self._generators: dict[str, torch.Generator] = {}
        # grammar matchers of constrained sequences (the engine validates through it too)
        self.structured = StructuredOutputManager(source.tokenizer, self.vocab_size)

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
        cache = self.config.cache
        per_block = self.kv_spec.bytes_per_block
        num_cpu = cache.num_cpu_blocks
        if num_cpu is None:
            num_cpu = (cache.swap_space + cache.cpu_cache_memory) // per_block
        if cache.num_gpu_blocks is not None:
            return cache.num_gpu_blocks, num_cpu
        if cache.kv_cache_memory is not None:
            return cache.kv_cache_memory // per_block, num_cpu
        if self.device.type != "cuda":
            return _CPU_DEFAULT_KV_BYTES // per_block, num_cpu
        free = self._profile_free_cuda_memory()
        return max(free // per_block, 0), num_cpu

    @torch.inference_mode()
    def _profile_free_cuda_memory(self) -> int:
        """Run a forward of max_num_batched_tokens tokens; what is left is for KV pages."""
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        n = min(self.config.scheduler.max_num_batched_tokens, self.config.scheduler.max_model_len)
        ids = torch.zeros(n, dtype=torch.long, device=self.device)
        pos = torch.arange(n, dtype=torch.long, device=self.device)
        with set_forward_context(ForwardContext(None, [], self.backend)):
            hidden = self.model(ids, pos)
            self.model.compute_logits(hidden[-min(n, self.config.scheduler.max_num_seqs) :])
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device)
        _, total = torch.cuda.mem_get_info(self.device)
        budget = int(total * self.config.cache.gpu_memory_utilization) - peak
        torch.cuda.empty_cache()
        return max(budget, 0)

    def init_cache(self, num_blocks: int, num_cpu_blocks: int) -> None:
        """Allocate the KV pages (after determine_num_blocks), then capture decode graphs."""
        self.cache = CacheEngine(self.kv_spec, num_blocks, num_cpu_blocks, self.device)
        if self.device.type == "cuda":
            self._warmup()
        if self.device.type == "cuda" and not self.config.model.enforce_eager:
            sched = self.config.scheduler
            self.graphs = CudaGraphRunner(
                self.model,
                self.backend,
                self.cache.kv_caches,
                max_num_seqs=sched.max_num_seqs,
                max_model_len=sched.max_model_len,
                block_size=self.block_size,
                device=self.device,
            )
            self.graphs.capture()

    @torch.inference_mode()
    def _warmup(self) -> None:
        """Compile every kernel variant serving will need before the first request.

        One mixed batch (two decodes, a prefill chunk over a cached prefix and a fresh prompt)
        runs through the paged path, writing only into blocks that are still free (their
        contents are overwritten before any request reads them).
        """
        bs = self.block_size
        lens = [(1, 3), (1, 2 * bs + 1), (bs + 3, 2 * bs + 5), (7, 7)]  # (query, context)
        need = [-(-ctx // bs) for _, ctx in lens]
        if sum(need) > self.cache.num_blocks:
            return
        tables, next_block = [], 0
        for n in need:
            tables.append(list(range(next_block, next_block + n)))
            next_block += n
        meta = build_metadata([q for q, _ in lens], [c for _, c in lens], tables, bs, self.device)
        total = sum(q for q, _ in lens)
        ids = torch.zeros(total, dtype=torch.long, device=self.device)
        pos = torch.cat([torch.arange(c - q, c, device=self.device) for q, c in lens])
        with set_forward_context(ForwardContext(meta, self.cache.kv_caches, self.backend)):
            hidden = self.model(ids, pos)
        logits = self.model.compute_logits(hidden[-2:])
        self.backend.warm_up(self.cache.kv_caches[0], self.model.num_heads, hidden.dtype)
        # and the sampler's kernels (fused temperature sampling plus greedy rows)
        params = [SamplingParams(temperature=0.7), SamplingParams(temperature=0.0)]
        batch = SamplingBatch.build(params, [[]] * 2, [[]] * 2, [None] * 2, self.device,
                                    self.vocab_size)  # fmt: skip
        self.sampler(logits, batch)
        torch.cuda.synchronize(self.device)

    # ------------------------------------------------------------------ steps
    def execute(
        self,
        output: SchedulerOutput,
        requests: Mapping[str, Request],
        fork_children: Mapping[str, Sequence[Request]] | None = None,
    ) -> ModelOutput:
        """Run one step to completion: ``launch(...).collect()``."""
        return self.launch(output, requests, fork_children).collect()

    @torch.inference_mode()
    def launch(
        self,
        output: SchedulerOutput,
        requests: Mapping[str, Request],
        fork_children: Mapping[str, Sequence[Request]] | None = None,
        prev: PendingStep | None = None,
    ) -> PendingStep:
        """Carry out swaps and copies, queue the model on the scheduled tokens, and sample.

        Returns before the sampled tokens reach the host (``PendingStep.collect`` waits).
        ``fork_children`` maps a request whose prompt completes this step to the forked
        samples of an ``n > 1`` request: they sample their first token from the same logits.
        ``prev`` is the still-running step whose sampled tokens are this step's inputs where a
        scheduled request has a ``prev_row`` (async scheduling).
        """
        assert self.cache is not None, "init_cache() must run before launch()"
        # the KV manager's order (core/scheduler_output.py): a block swapped out or written
        # back may be reused as a CoW target, a swap-in or load may land in a freed block
        self.cache.apply_moves(output)
        pending = PendingStep(ModelOutput())
        if not output.scheduled:
            return pending
        inputs = prepare_inputs(output, self.block_size, self.device)
        if output.scheduled[0].prev_row is not None:
            inputs = self._inputs_from_prev(output, inputs, prev)
        if output.num_steps > 1:
            self._decode_steps(output, requests, inputs, pending, prev)
            return pending
        hidden = self._forward(inputs)
        self._prompt_logprobs(output, requests, inputs, hidden, pending.result)
        self._sample(output, requests, inputs, hidden, fork_children or {}, pending, prev)
        return pending

    def _inputs_from_prev(
        self, output: SchedulerOutput, inputs: ModelInputs, prev: PendingStep | None
    ) -> ModelInputs:
        """Take each row's input token from the previous step's sampled tokens, on device."""
        if prev is None or prev.last_token_ids is None:
            raise ValueError("a continuation step needs the previous step's PendingStep")
        rows = [s.prev_row for s in output.scheduled]
        if rows == list(range(len(prev.row_ids))):
            inputs.input_ids = prev.last_token_ids
        else:
            index = to_device(rows, torch.long, self.device)
            inputs.input_ids = prev.last_token_ids.index_select(0, index)
        return inputs

    def _forward(self, inputs: ModelInputs) -> torch.Tensor:
        meta = inputs.metadata
        if (
            self.graphs is not None
            and inputs.group_metadata is None  # hybrid KV groups run eagerly (no graphs yet)
            and meta.num_decodes == meta.num_seqs
            and self.graphs.can_run(meta.num_seqs, meta.max_seq_len)
        ):
            return self.graphs.run(inputs.input_ids, inputs.positions, meta)
        context = ForwardContext(
            meta, self.cache.kv_caches, self.backend, inputs.group_metadata, self.layer_group
        )
        with set_forward_context(context):
            return self.model(inputs.input_ids, inputs.positions)

    def _decode_steps(
        self,
        output: SchedulerOutput,
        requests: Mapping[str, Request],
        inputs: ModelInputs,
        pending: PendingStep,
        prev: PendingStep | None,
    ) -> None:
        """``output.num_steps`` decode steps back to back, one host sync (at collect)."""
        row_requests = [requests[s.request_id] for s in output.scheduled]
        batch = self._sampling_batch(row_requests, prev)
        pending.sampling_batch = batch
        sampled: list[torch.Tensor] = []
        for step in range(output.num_steps):
            if step:
                inputs = advance_decode_inputs(inputs, sampled[-1], self.block_size)
            logits = self.model.compute_logits(self._forward(inputs))
            sampled.append(self.sampler(logits, batch).token_ids)
        ids = [r.request_id for r in row_requests]
        pending.track(ids, torch.stack(sampled, dim=1), multi_step=True)

    def _sampling_batch(
        self, row_requests: list[Request], prev: PendingStep | None = None
    ) -> SamplingBatch:
        """The rows' sampling tensors; a continuation of the same rows reuses the previous
        step's (only plain-sampling requests continue: nothing in it depends on the step)."""
        ids = [r.request_id for r in row_requests]
        if prev is not None and prev.sampling_batch is not None and prev.row_ids == ids:
            return prev.sampling_batch
        return self._build_sampling_batch(row_requests)

    def _build_sampling_batch(self, row_requests: list[Request]) -> SamplingBatch:
        return SamplingBatch.build(
            params=[r.sampling_params for r in row_requests],
            output_token_ids=[r.output_token_ids for r in row_requests],
            prompt_token_ids=[r.prompt_token_ids for r in row_requests],
            generators=[self._request_generator(r) for r in row_requests],
            banned_token_ids=[_banned_tokens(r) for r in row_requests],
            device=self.device,
            vocab_size=self.vocab_size,
            grammar_bitmask=self.structured.bitmask(
                [r.request_id for r in row_requests],
                [r.sampling_params.structured_output for r in row_requests],
                [r.output_token_ids for r in row_requests],
            ),
        )

    def _sample(
        self,
        output: SchedulerOutput,
        requests: Mapping[str, Request],
        inputs: ModelInputs,
        hidden: torch.Tensor,
        fork_children: Mapping[str, Sequence[Request]],
        pending: PendingStep,
        prev: PendingStep | None,
    ) -> None:
        rows: list[int] = []
        row_requests: list[Request] = []
        for i, sched in enumerate(output.scheduled):
            if not sched.sample:
                continue
            request = requests[sched.request_id]
            for member in (request, *fork_children.get(sched.request_id, ())):
                rows.append(inputs.query_start[i + 1] - 1)
                row_requests.append(member)
        if not rows:
            return
        row_index = to_device(rows, torch.long, self.device)
        logits = self.model.compute_logits(hidden.index_select(0, row_index))
        batch = self._sampling_batch(row_requests, prev)
        pending.sampling_batch = batch
        sampled = self.sampler(logits, batch)
        pending.track([r.request_id for r in row_requests], sampled.token_ids, multi_step=False)
        result = pending.result
        for j, request in enumerate(row_requests):
            if sampled.logprobs is not None and request.sampling_params.logprobs is not None:
                result.logprobs[request.request_id] = sampled.logprobs[j]
            if sampled.sampled_logprobs is not None:
                result.sampled_logprob[request.request_id] = sampled.sampled_logprobs[j]

    def _prompt_logprobs(
        self,
        output: SchedulerOutput,
        requests: Mapping[str, Request],
        inputs: ModelInputs,
        hidden: torch.Tensor,
        result: ModelOutput,
    ) -> None:
        """Logprobs of each prompt token given the ones before it (vLLM's prompt_logprobs)."""
        for i, sched in enumerate(output.scheduled):
            request = requests[sched.request_id]
            k = request.sampling_params.prompt_logprobs
            start = sched.start_position
            if k is None or start >= request.num_prompt_tokens or request.num_output_tokens:
                continue
            # row j predicts token start + j + 1; keep only rows whose target is a prompt token
            end = min(start + len(sched.token_ids), request.num_prompt_tokens - 1)
            if end <= start:
                continue
            lo = inputs.query_start[i]
            logits = self.model.compute_logits(hidden[lo : lo + end - start])
            targets = torch.tensor(
                request.prompt_token_ids[start + 1 : end + 1], dtype=torch.long, device=self.device
            )
            result.prompt_logprobs[request.request_id] = compute_prompt_logprobs(logits, targets, k)

    def _request_generator(self, request: Request) -> torch.Generator | None:
        """``_generator``, its failure blamed on this request alone (the engine fails only it)."""
        try:
            return self._generator(request)
        except Exception as exc:  # noqa: BLE001 - re-raised with the request it belongs to
            raise RequestFailure([request.request_id], exc) from exc

    def _generator(self, request: Request) -> torch.Generator | None:
        seed = request.sampling_params.seed
        if seed is None:
            return None
        generator = self._generators.get(request.request_id)
        if generator is None:
            # each of the n samples of a seeded request gets its own stream
            generator = torch.Generator(device=self.device)
            generator.manual_seed(seed + request.sample_index)
            self._generators[request.request_id] = generator
        return generator

    def release(self, request_ids: Sequence[str]) -> None:
        """Forget per-request state (seeded generators) of finished requests."""
        for request_id in request_ids:
            self._generators.pop(request_id, None)
        self.structured.release(request_ids)


def _banned_tokens(request: Request) -> list[int]:
    """Before min_tokens, EOS and stop token ids may not be sampled."""
    params = request.sampling_params
    if request.num_output_tokens >= params.min_tokens:
        return []
    banned = list(params.stop_token_ids)
    if not params.ignore_eos:
        banned.extend(request.eos_token_ids)
    return banned


def _dtype(config: EngineConfig) -> torch.dtype:
    return getattr(torch, config.cache.cache_dtype)
