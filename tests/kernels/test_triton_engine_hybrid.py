"""The whole engine on the Triton backend for hybrid (Gemma) models, against transformers.

The end-to-end hybrid tests run the torch path on CPU; this one sends tiny Gemma 2 and Gemma 3
models through the Triton kernels (the interpreter on CPU, the real kernels on a GPU), with one
query head per tile and with GQA packing. It exists because a layout bug only the Triton
cache-write kernel could see (each KV group's slots as a strided view) passed every torch-path
test and gave wrong tokens from the first one on the H200.

The Gemma layers' fused kernels (``kernels/gemma_norm.py``, GELU-and-mul, and for Gemma 3 the
q/k norm + RoPE kernel) are forced on here too, so on CPU they run in the interpreter as well:
the greedy tokens must still be transformers'. (Gemma 2's plain RoPE kernel is left to the
GPU: it is Llama's, tested elsewhere, and the slowest of them in the interpreter.)
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

from hybrid_models import hf_greedy, prompts, save_tiny_model  # noqa: E402

from pagedllm import LLM, SamplingParams  # noqa: E402
from pagedllm.layers import _fused  # noqa: E402

GEMMA_KERNELS = {
    "gemma2": {"rmsnorm", "gelu_and_mul"},
    "gemma3": {"rmsnorm", "gelu_and_mul", "rotary"},
}


@pytest.mark.parametrize("name,pack", [("gemma2", False), ("gemma3", True)])
def test_triton_path_greedy_equals_transformers(tmp_path, monkeypatch, device, name, pack):
    import pagedllm.attention.triton_backend as triton_backend
    import pagedllm.worker.model_runner as model_runner

    extend = triton_backend.paged_extend_attention
    monkeypatch.setattr(triton_backend, "paged_extend_attention",
                        lambda *a, **k: extend(*a, **{**k, "pack_gqa": pack}))  # fmt: skip
    monkeypatch.setattr(
        model_runner.ModelRunner, "_make_backend",
        lambda self: triton_backend.TritonAttentionBackend(
            max_model_len=self.config.scheduler.max_model_len),
    )  # fmt: skip
    use_fused, used = _fused.use_fused, set()

    def force_gemma_kernels(x, kernel):
        if kernel in GEMMA_KERNELS[name]:
            used.add(kernel)
            return True
        return use_fused(x, kernel)

    monkeypatch.setattr(_fused, "use_fused", force_gemma_kernels)
    hf = save_tiny_model(name, tmp_path)
    batch = prompts([40, 75])
    want = [hf_greedy(hf, p, 6) for p in batch]
    with LLM(str(tmp_path), device=str(device), dtype="float32", enforce_eager=True) as llm:
        outs = llm.generate(batch, SamplingParams(temperature=0, max_tokens=6, ignore_eos=True),
                            use_tqdm=False)  # fmt: skip
        got = [o.outputs[0].token_ids for o in outs]
        assert (
            llm.engine.scheduler.kv_manager.num_free_blocks
            == llm.engine.scheduler.kv_manager.num_blocks
        )
    assert used == GEMMA_KERNELS[name]
    assert got == want
    del hf
    if device.type == "cuda":
        torch.cuda.empty_cache()
