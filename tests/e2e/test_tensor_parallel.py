"""Tensor parallelism on CPU: 2 gloo ranks give what 1 process gives, and own their workers.

Tiny random-weight checkpoints written by transformers (safetensors) stand in for real models:
the bundled SmolLM2 has 9 query heads, which 2 ranks cannot split. One checkpoint has 2 KV heads
(split 1 + 1) and an odd vocabulary (the last rank's slice is padded); the other is a Qwen3 with
ONE KV head (replicated on both ranks) and tied embeddings.
"""

from __future__ import annotations

import gc
import itertools
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import transformers
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import pre_tokenizers
from tokenizers.models import WordLevel

from e2e_utils import assert_all_blocks_free
from pagedllm import LLM, SamplingParams
from pagedllm.parallel.sharding import check_tensor_parallel, kv_head_range, vocab_range

SRC = str(Path(__file__).resolve().parents[2] / "src")
PROMPTS = [[3, 1, 4], list(range(10, 57)), [7] * 20 + [11, 12], list(range(200, 209))]
MAX_NEW = 12

MODELS = {
    # 4 q heads, 2 kv heads: each rank one kv head; vocab 383 = 192 + 191 (+1 padding row)
    "llama-kv2-oddvocab": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(num_key_value_heads=2, vocab_size=383, tie_word_embeddings=False, attention_bias=True),
    ),
    # 1 kv head on 2 ranks: replicated; q/k norms per head; tied LM head shares the shard
    "qwen3-kv1-tied": (
        "Qwen3Config",
        "Qwen3ForCausalLM",
        dict(num_key_value_heads=1, vocab_size=384, tie_word_embeddings=True, head_dim=32),
    ),
}


def _save(directory: Path, name: str) -> Path:
    config_cls, arch, extra = MODELS[name]
    torch.manual_seed(0)
    config = getattr(transformers, config_cls)(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        **extra,
    )
    model = getattr(transformers, arch)(config)
    with torch.no_grad():  # larger than HF's init so greedy choices are far from ties
        for pname, p in model.named_parameters():
            p.copy_(
                1.0 + 0.2 * torch.randn_like(p) if "norm" in pname else 0.15 * torch.randn_like(p)
            )
    model.save_pretrained(directory, safe_serialization=True)
    vocab = {f"<{i}>": i for i in range(config.vocab_size)}
    backend = BackendTokenizer(WordLevel(vocab, unk_token="<0>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.save(str(directory / "tokenizer.json"))
    return directory


def _llm(path: Path, tp: int, **kw) -> LLM:
    return LLM(str(path), dtype="float32", device="cpu", tensor_parallel_size=tp, **kw)


def _run(llm: LLM) -> list:
    greedy = SamplingParams(max_tokens=MAX_NEW, temperature=0.0, ignore_eos=True)
    scored = SamplingParams(
        max_tokens=4, temperature=0.0, logprobs=3, prompt_logprobs=2, ignore_eos=True
    )
    outs = llm.generate(PROMPTS, greedy, use_tqdm=False)
    outs += llm.generate(PROMPTS[1:2], scored, use_tqdm=False)
    return outs


def _logprob_values(entries) -> list[float]:
    values = []
    for entry in entries or []:
        if entry is None:
            continue
        values.extend(float(getattr(v, "logprob", v)) for v in entry.values())
    return values


def _alive(pid: int) -> bool:
    """Running (a zombie nobody reaped yet counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("name", list(MODELS))
def test_two_ranks_match_one_process(tmp_path: Path, name: str) -> None:
    path = _save(tmp_path, name)
    reference = _run(_llm(path, 1))
    llm = _llm(path, 2)
    executor = llm.engine.runner
    workers = executor.workers
    assert len(workers) == 1 and workers[0].is_alive() and workers[0].daemon
    # each rank holds half of the q heads; kv heads split or replicated
    kv_total = MODELS[name][2]["num_key_value_heads"]
    assert executor.model.num_heads == 2
    assert executor.model.num_kv_heads == max(kv_total // 2, 1)
    got = _run(llm)
    for ref, out in zip(reference, got, strict=True):
        assert out.outputs[0].token_ids == ref.outputs[0].token_ids
    # the scored request: logprobs of sampled and prompt tokens agree to float32 rounding
    ref_lp = _logprob_values(reference[-1].outputs[0].logprobs)
    got_lp = _logprob_values(got[-1].outputs[0].logprobs)
    assert ref_lp and got_lp == pytest.approx(ref_lp, abs=1e-4)
    ref_plp = _logprob_values(reference[-1].prompt_logprobs)
    got_plp = _logprob_values(got[-1].prompt_logprobs)
    assert ref_plp and got_plp == pytest.approx(ref_plp, abs=1e-4)
    assert_all_blocks_free(llm)
    # closing stops the workers and leaves the process group (a new TP engine may start)
    executor.shutdown()
    assert not any(w.is_alive() for w in workers)
    assert not torch.distributed.is_initialized()
    executor.shutdown()  # idempotent


def test_garbage_collected_engine_stops_its_workers(tmp_path: Path) -> None:
    path = _save(tmp_path, "llama-kv2-oddvocab")
    params = SamplingParams(max_tokens=MAX_NEW, temperature=0.0, ignore_eos=True)
    reference = _llm(path, 1).generate(PROMPTS, params, use_tqdm=False)
    # memory pressure: 9 blocks of 8 tokens cannot hold all 4 requests: preemptions
    llm = _llm(path, 2, num_gpu_blocks=9, block_size=8)
    outs = llm.generate(PROMPTS, params, use_tqdm=False)
    assert llm.engine.scheduler.num_preemptions > 0
    assert [o.outputs[0].token_ids for o in outs] == [o.outputs[0].token_ids for o in reference]
    assert_all_blocks_free(llm)
    workers = llm.engine.runner.workers
    del llm, outs
    gc.collect()
    deadline = time.monotonic() + 10
    while any(w.is_alive() for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(w.is_alive() for w in workers)
    assert not multiprocessing.active_children()


def test_workers_exit_when_the_engine_process_is_killed(tmp_path: Path) -> None:
    path = _save(tmp_path, "llama-kv2-oddvocab")
    script = textwrap.dedent(
        f"""
        import os, signal
        from pagedllm import LLM
        if __name__ == "__main__":
            llm = LLM({str(path)!r}, dtype="float32", device="cpu", tensor_parallel_size=2)
            print(llm.engine.runner.workers[0].pid, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)  # no atexit, no finalizers
        """
    )
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    worker_pid = int(proc.stdout.split()[-1])
    deadline = time.monotonic() + 10
    while _alive(worker_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(worker_pid), "the worker outlived its engine process"


def test_impossible_split_is_a_clear_error(tmp_path: Path) -> None:
    # SmolLM2-135M's shape: 9 query heads, 3 kv heads
    config = dict(
        architectures=["LlamaForCausalLM"],
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=1,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=512,
        max_position_embeddings=128,
    )
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"num_attention_heads=9.*num_key_value_heads=3"):
        LLM(str(tmp_path), load_format="dummy", device="cpu", tensor_parallel_size=2)
    assert not multiprocessing.active_children(), "no worker may start for an impossible split"
    check_tensor_parallel(config, 3)  # 3 ranks: 3 q heads and 1 kv head each
    # 9 ranks: 1 q head each; each kv head replicated on 3 ranks
    check_tensor_parallel({**config, "intermediate_size": 1152}, 9)
    with pytest.raises(ValueError, match="num_key_value_heads=3"):
        check_tensor_parallel({**config, "num_attention_heads": 12}, 2)  # 3 kv heads over 2
    with pytest.raises(ValueError, match="cannot be replicated"):
        check_tensor_parallel({**config, "num_attention_heads": 12, "num_key_value_heads": 4}, 6)
    with pytest.raises(ValueError, match="intermediate_size"):
        check_tensor_parallel({**config, "intermediate_size": 1537}, 3)


def test_shard_ranges() -> None:
    # replicated kv heads: 2 kv heads over 4 ranks -> ranks 0,1 hold head 0; ranks 2,3 head 1
    assert [kv_head_range(2, r, 4) for r in range(4)] == [(0, 1), (0, 1), (1, 2), (1, 2)]
    assert [kv_head_range(4, r, 2) for r in range(2)] == [(0, 2), (2, 4)]
    # every token id lands in exactly one rank's slice, slices are equal-sized
    for vocab, tp in ((383, 2), (49152, 3), (10, 4)):
        ranges = [vocab_range(vocab, r, tp) for r in range(tp)]
        assert ranges[0][0] == 0 and ranges[-1][1] == vocab
        assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
        assert len({rows for _, _, rows in ranges}) == 1


@pytest.mark.slow
def test_bundled_smollm2_three_ranks() -> None:
    """SmolLM2-135M (9 q heads, 3 kv heads) splits over 3 ranks: 3 q heads, 1 kv head each."""
    prompts = [[1, 2, 3, 4, 5], list(range(100, 140))]
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    ref = LLM(dtype="float32", device="cpu").generate(prompts, params, use_tqdm=False)
    llm = LLM(dtype="float32", device="cpu", tensor_parallel_size=3)
    try:
        got = llm.generate(prompts, params, use_tqdm=False)
        assert [o.outputs[0].token_ids for o in got] == [o.outputs[0].token_ids for o in ref]
    finally:
        llm.engine.runner.shutdown()
