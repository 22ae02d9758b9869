"""CUDA graphs for hybrid (multi-group) models: the captured input layout, checked on the CPU.

A captured decode graph reads static buffers: one slot row and one block-table buffer per KV
cache group, shared lengths, padding rows. ``CudaGraphRunner.stage`` fills them and
``context(bucket)`` is the forward context the graph is captured under. On the CPU the same
model run eagerly under that context must give the eager step's hidden states for the real
rows (the replay on the GPU runs exactly these kernels on exactly these buffers). The GPU half
(capture and replay, greedy equal to transformers with graphs on) is in
``benchmarks/hybrid_kv_gpu.py``.
"""

from __future__ import annotations

import pytest
import torch
from hybrid_models import prompts, save_tiny_model

from pagedllm import LLM, SamplingParams
from pagedllm.attention.metadata import set_forward_context
from pagedllm.worker.cuda_graphs import CudaGraphRunner
from pagedllm.worker.input_batch import GroupTableRows, prepare_inputs


def _decode_plan(llm: LLM, ps: list[list[int]]):
    """Run the prompts until every request decodes past its window; the next decode plan."""
    engine = llm.engine
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    for i, p in enumerate(ps):
        engine.add_request(f"r{i}", None, params, prompt_token_ids=p)
    sched = engine.scheduler
    for _ in range(200):
        engine.step()
        running = sched.running
        if len(running) == len(ps) and all(r.num_output_tokens >= 6 for r in running):
            break
    plan = sched.schedule()
    assert plan.num_decodes == len(plan.scheduled) == len(ps)
    return plan


def _graph_forward(runner, graphs: CudaGraphRunner, inputs, groups):
    bucket = graphs.stage(inputs.input_ids, inputs.positions, inputs.metadata, groups)
    assert bucket > inputs.input_ids.shape[0], "the test needs padding rows"
    with set_forward_context(graphs.context(bucket)):
        hidden = runner.model(graphs.buf.input_ids[:bucket], graphs.buf.positions[:bucket])
    return hidden[: inputs.input_ids.shape[0]]


@pytest.mark.parametrize("name", ["gemma2", "gemma3"])
@torch.inference_mode()
def test_graph_buffers_give_the_eager_step(tmp_path, name):
    save_tiny_model(name, tmp_path)
    llm = LLM(model=str(tmp_path), dtype="float32", device="cpu", block_size=4,
              num_gpu_blocks=200, max_model_len=128, max_num_batched_tokens=64)  # fmt: skip
    runner = llm.engine.runner
    num_groups = runner.kv_layout.num_groups
    assert num_groups > 1
    ps = prompts([40, 75, 33])  # 3 rows: bucket 4 has a padding row
    plan = _decode_plan(llm, ps)
    inputs = prepare_inputs(plan, runner.block_size, runner.device, GroupTableRows())
    eager = runner.forward(inputs)  # no graphs on the CPU: the eager path
    make = dict(max_num_seqs=8, max_model_len=128, block_size=4, device=torch.device("cpu"))
    graphs = CudaGraphRunner(
        runner.model, runner.backend, runner.cache.kv_caches, **make,
        layer_group=runner.layer_group, num_groups=num_groups,
    )  # fmt: skip
    # stale buffers from an earlier, longer batch must not leak into this one
    graphs.buf.block_tables.fill_(7)
    graphs.buf.slot_mapping.fill_(3)
    got = _graph_forward(runner, graphs, inputs, inputs.group_metadata)
    torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-5)
    logits = runner.model.compute_logits
    assert torch.equal(logits(got).argmax(-1), logits(eager).argmax(-1))
    # padding rows wrote nothing: the pages still hold what the eager step wrote
    again = runner.forward(inputs)
    torch.testing.assert_close(again, eager, rtol=1e-5, atol=1e-5)

    # the single-table layout (every layer reading group 0's tables) is wrong here
    single = CudaGraphRunner(runner.model, runner.backend, runner.cache.kv_caches, **make)
    wrong = _graph_forward(runner, single, inputs, None)
    assert not torch.allclose(wrong, eager, rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="groups"):
        graphs.stage(inputs.input_ids, inputs.positions, inputs.metadata, None)
    llm.close()
