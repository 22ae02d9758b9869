"""The offline Python API: ``LLM(...).generate(...)`` and ``.chat(...)``."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

from pagedllm.config import EngineConfig
from pagedllm.engine.beam_search import BeamSearchOutput, BeamSearchParams, BeamSearchSequence
from pagedllm.engine.llm_engine import LLMEngine
from pagedllm.engine.outputs import RequestOutput
from pagedllm.sampling_params import SamplingParams

Prompt = str | list[int]
Params = SamplingParams | BeamSearchParams
Message = dict[str, Any]


class LLM:
    """An engine for offline batches.

    Example::

        llm = LLM()  # the bundled SmolLM2-135M-Instruct on CPU
        out = llm.generate(["Hello, my name is"], SamplingParams(max_tokens=20))
        print(out[0].outputs[0].text)
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        tokenizer: str | None = None,
        dtype: str = "auto",
        device: str = "auto",
        load_format: str = "auto",
        seed: int = 0,
        block_size: int = 16,
        kv_cache_memory: int | None = None,
        kv_cache_dtype: str = "auto",
        num_gpu_blocks: int | None = None,
        gpu_memory_utilization: float = 0.90,
        swap_space: int = 0,
        cpu_cache_memory: int = 0,
        kv_disk_path: str | None = None,
        kv_disk_bytes: int = 0,
        max_model_len: int = 4096,
        max_num_seqs: int = 256,
        max_num_batched_tokens: int = 8192,
        enable_prefix_caching: bool = True,
        disable_hybrid_kv_cache: bool = False,
        enable_chunked_prefill: bool = True,
        preemption_mode: str = "recompute",
        num_scheduler_steps: int = 1,
        async_scheduling: bool | None = None,
        truncate_max_tokens: bool = False,
        enforce_eager: bool = False,
        tensor_parallel_size: int = 1,
    ) -> None:
        options = dict(locals())
        del options["self"]
        self.engine = LLMEngine.from_config(EngineConfig.from_flat(**options))
        self._ids = itertools.count()

    def close(self) -> None:
        """Release worker processes (tensor parallelism). ``with LLM(...) as llm:`` calls it."""
        self.engine.shutdown()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        sampling_params: Params | Sequence[Params] | None = None,
        *,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Complete each prompt (text or token ids); outputs come back in prompt order.

        A ``BeamSearchParams`` entry makes that prompt a beam search in the same batch (its
        output holds the ``beam_width`` best sequences, best first)."""
        prompt_list = _as_prompt_list(prompts)
        params = _broadcast_params(sampling_params, len(prompt_list))
        return self._run(
            [(p, None) if isinstance(p, str) else (None, p) for p in prompt_list], params, use_tqdm
        )

    def beam_search(
        self,
        prompts: Prompt | Sequence[Prompt],
        params: BeamSearchParams,
        *,
        use_tqdm: bool = False,
    ) -> list[BeamSearchOutput]:
        """Beam search over each prompt (vLLM's offline API): the ``beam_width`` best
        sequences per prompt, best first, each with its summed logprob and ranking score."""
        if not isinstance(params, BeamSearchParams):
            raise TypeError(f"params must be BeamSearchParams, got {type(params).__name__}")
        prompt_list = _as_prompt_list(prompts)
        outputs = self._run(
            [(p, None) if isinstance(p, str) else (None, p) for p in prompt_list],
            [params] * len(prompt_list),
            use_tqdm,
        )
        return [
            BeamSearchOutput(
                sequences=[
                    BeamSearchSequence(
                        tokens=out.prompt_token_ids + c.token_ids,
                        output_token_ids=c.token_ids,
                        text=c.text,
                        cum_logprob=c.cumulative_logprob,
                        score=c.score,
                        finish_reason=c.finish_reason,
                    )
                    for c in out.outputs
                ],
                error=out.error,
            )
            for out in outputs
        ]

    def chat(
        self,
        messages: list[Message] | Sequence[list[Message]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        use_tqdm: bool = True,
        add_generation_prompt: bool = True,
    ) -> list[RequestOutput]:
        """Answer one conversation or a list of them through the model's chat template."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        params = _broadcast_params(sampling_params, len(conversations))
        prompts = [
            (None, self.encode_chat(c, add_generation_prompt=add_generation_prompt))
            for c in conversations
        ]
        return self._run(prompts, params, use_tqdm)

    def encode_chat(self, messages: list[Message], add_generation_prompt: bool = True) -> list[int]:
        """Token ids of a conversation rendered by the model's chat template."""
        _check_messages(messages)
        return list(
            self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=add_generation_prompt, tokenize=True
            )
        )

    def stream(
        self, prompt: Prompt, sampling_params: SamplingParams | None = None
    ) -> Iterator[RequestOutput]:
        """Run one request alone and yield its outputs as they grow (deltas filled in)."""
        params = sampling_params or SamplingParams()
        request_id = f"stream-{next(self._ids)}"
        text, ids = (prompt, None) if isinstance(prompt, str) else (None, list(prompt))
        self.engine.add_request(request_id, text, params, prompt_token_ids=ids)
        try:
            while self.engine.has_unfinished_requests():
                for output in self.engine.step():
                    if output.request_id == request_id:
                        yield output
        finally:
            self.engine.abort_request(request_id)

    def _run(
        self,
        prompts: list[tuple[str | None, list[int] | None]],
        params: list[Params],
        use_tqdm: bool,
    ) -> list[RequestOutput]:
        ids = [f"gen-{next(self._ids)}" for _ in prompts]
        added: list[str] = []
        try:
            for request_id, (text, token_ids), p in zip(ids, prompts, params, strict=True):
                self.engine.add_request(
                    request_id, text, p, prompt_token_ids=token_ids, stream=False
                )
                added.append(request_id)
            return self._drain(ids, use_tqdm)
        except BaseException:
            self.engine.abort_request(added)  # a failed batch gives every block back
            while self.engine.has_unfinished_requests():
                self.engine.step()
            raise

    def _drain(self, ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        finals: dict[str, RequestOutput] = {}
        bar = _progress(len(ids)) if use_tqdm else None
        while len(finals) < len(ids) and self.engine.has_unfinished_requests():
            for output in self.engine.step():
                if output.finished:
                    finals[output.request_id] = output
                    if bar is not None:
                        bar.update(1)
        if bar is not None:
            bar.close()
        return [finals[i] for i in ids]


def _as_prompt_list(prompts: Prompt | Sequence[Prompt]) -> list[Prompt]:
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, (list, tuple)) and prompts and isinstance(prompts[0], int):
        return [list(prompts)]
    if not isinstance(prompts, (list, tuple)):
        raise TypeError("prompts must be a string, a list of token ids, or a list of those")
    return list(prompts)


def _broadcast_params(params: Params | Sequence[Params] | None, count: int) -> list[Params]:
    if params is None:
        return [SamplingParams()] * count
    if isinstance(params, (SamplingParams, BeamSearchParams)):
        return [params] * count
    params = list(params)
    if len(params) != count:
        raise ValueError(
            f"got {len(params)} SamplingParams for {count} prompts: pass one or one per prompt"
        )
    return params


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise ValueError("a conversation must be a non-empty list of {'role', 'content'} dicts")
    for message in messages:
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError(f"each message needs 'role' and 'content' keys, got {message!r}")
        if message["role"] not in ("system", "user", "assistant", "tool"):
            raise ValueError(f"unknown role {message['role']!r}: use system, user or assistant")


def _progress(total: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="Processed prompts", dynamic_ncols=True, disable=total < 2)
