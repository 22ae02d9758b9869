"""FP8 KV cache vs bf16 KV on the GPU, in one run (issue 15 part 3).

    PYTHONPATH=src python3 benchmarks/fp8_kv_gpu.py --out $OUT [--smoke] [--skip SECTIONS]

Sections (each isolated: a failure prints its traceback and the rest still run):
 1. copy_bandwidth: the device's copy bandwidth (the floor's denominator);
 2. decode_kernel: the paged decode kernel at 8 x 32k and 1 x 128k (16 query / 8 KV heads, d 128,
    block 16), bf16 pages vs fp8 pages (k/v scale tensors as the engine passes them): fp8 output
    against the torch path on the same fp8 pages and against the bf16 kernel, then ms per call
    (CUDA events, L2 flushed, median) and K/V bandwidth at the heuristic's split count and others;
 3. extend_kernel: the last 8,192-query chunk of a 32k prefill over its paged prefix, bf16 vs fp8;
 4. greedy: Qwen3-0.6B shape, dummy bf16 weights, 8 prompts x 64 greedy tokens, fp8 KV vs bf16
    KV: tokens equal and first divergence (dummy weights: this checks the GPU path end to end,
    the accuracy of real weights is benchmarks/fp8_kv_accuracy.py on CPU);
 5. w1: W1 (DESIGN.md; as ``pagedllm bench throughput --preset qwen3-0.6b --dummy``), bf16 vs fp8;
 6. long: W-long 8 x 32k (``--workload long``): prefill s and decode ms/step, bf16 vs fp8.
``--smoke`` shrinks every size (a tiny random Qwen3 instead of the preset) to check the
plumbing on CPU; its timings mean nothing.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent / "src"))

from long_context import RESULTS, copy_bandwidth, section, time_cuda  # noqa: E402

from pagedllm.attention.kv_quant import default_kv_scale, quantize  # noqa: E402
from pagedllm.benchmark import workloads  # noqa: E402
from pagedllm.benchmark.long_workload import run_long_workload  # noqa: E402
from pagedllm.benchmark.throughput import run_workload  # noqa: E402
from pagedllm.config import EngineConfig  # noqa: E402
from pagedllm.engine.llm_engine import LLMEngine  # noqa: E402
from pagedllm.sampling_params import SamplingParams  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
KV_DTYPES = ("auto", "fp8")  # auto = the model's bf16


def _release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def _paged_case(num_seqs: int, ctx: int, bs: int, kvh: int, d: int):
    from pagedllm.attention.metadata import build_metadata

    blocks_per = -(-ctx // bs)
    cache = torch.randn(2, num_seqs * blocks_per + 1, bs, kvh, d, dtype=torch.bfloat16, device=DEV)
    perm = torch.randperm(num_seqs * blocks_per).tolist()
    tables = [perm[i * blocks_per : (i + 1) * blocks_per] for i in range(num_seqs)]
    return cache, tables, build_metadata


def decode_case(num_seqs: int, ctx: int, bs: int, kvh: int, qh: int, d: int, sms: int):
    """bf16 pages, the same pages in fp8, decode metadata, a bf16 query and the split heuristic
    for ``num_seqs`` sequences of ``ctx`` tokens."""
    from pagedllm.attention.metadata import build_metadata
    from pagedllm.kernels import default_num_splits

    cache16, tables, _ = _paged_case(num_seqs, ctx, bs, kvh, d)
    meta = build_metadata([1] * num_seqs, [ctx] * num_seqs, tables, bs, DEV)
    q = torch.randn(num_seqs, qh, d, dtype=torch.bfloat16, device=DEV)
    return cache16, quantize(cache16, None), meta, q, default_num_splits(num_seqs, kvh, ctx, sms)


@section("decode_kernel")
def decode_kernel(smoke: bool) -> dict:
    from pagedllm.attention.torch_backend import TorchAttentionBackend
    from pagedllm.kernels import paged_decode_attention

    bs, kvh, qh, d = 16, 8, 16, 128
    shapes = [(2, 64), (1, 96)] if smoke else [(8, 32000), (1, 128000)]
    sms = torch.cuda.get_device_properties(0).multi_processor_count if DEV == "cuda" else 8
    flush = torch.empty(256 << 20, dtype=torch.uint8, device=DEV) if DEV == "cuda" else None
    scale_t = default_kv_scale(DEV)
    out: dict = {}
    for num_seqs, ctx in shapes:
        cache16, cache8, meta, q, heuristic = decode_case(num_seqs, ctx, bs, kvh, qh, d, sms)
        row: dict = {"heuristic_splits": heuristic}
        for name, cache, kv_scale in (("bf16", cache16, None), ("fp8", cache8, scale_t)):

            def call(splits, cache=cache, kv_scale=kv_scale, q=q, meta=meta):
                return paged_decode_attention(
                    q, cache, meta.block_tables, meta.seq_lens, d**-0.5, num_splits=splits,
                    kv_scale=kv_scale,
                )  # fmt: skip

            got = call(heuristic)
            if name == "fp8":
                row["fp8_vs_bf16_kernel_rel_err"] = _rel(got, row.pop("_bf16_out"))
                if ctx <= 32000:  # the oracle gathers every page: kept to the shorter shape
                    ref = TorchAttentionBackend().forward(
                        q, cache, meta, d**-0.5, kv_scale=kv_scale
                    )
                    row["fp8_vs_torch_rel_err"] = _rel(got, ref)
            else:
                row["_bf16_out"] = got
            kv_bytes = 2 * num_seqs * ctx * kvh * d * cache.element_size()
            splits_list = [heuristic] if smoke else sorted({heuristic, 8, 16, 32, 64})
            times = {
                s: time_cuda(lambda s=s: call(s), 5 if smoke else 50, flush) for s in splits_list
            }
            row[name] = {
                "kv_bytes": kv_bytes,
                "ms": {s: round(ms, 4) for s, ms in times.items()},
                "tb_s": {s: round(kv_bytes / ms / 1e9, 3) for s, ms in times.items()},
            }
        row["speedup_at_heuristic"] = row["bf16"]["ms"][heuristic] / row["fp8"]["ms"][heuristic]
        out[f"{num_seqs}x{ctx}"] = row
        del cache16, cache8
        _release()
    return out


@section("extend_kernel")
def extend_kernel(smoke: bool) -> dict:
    from pagedllm.attention.torch_backend import TorchAttentionBackend
    from pagedllm.kernels import paged_extend_attention

    bs, kvh, qh, d = 16, 8, 16, 128
    ctx, qlen = (96, 32) if smoke else (32000, 8192)
    cache16, tables, build_metadata = _paged_case(1, ctx, bs, kvh, d)
    cache8 = quantize(cache16, None)
    meta = build_metadata([qlen], [ctx], tables, bs, DEV)
    q = torch.randn(qlen, qh, d, dtype=torch.bfloat16, device=DEV)
    flush = torch.empty(256 << 20, dtype=torch.uint8, device=DEV) if DEV == "cuda" else None
    row: dict = {"prompt": f"{qlen} queries over {ctx} keys"}
    outs = {}
    for name, cache, kv_scale in (("bf16", cache16, None), ("fp8", cache8, default_kv_scale(DEV))):

        def call(cache=cache, kv_scale=kv_scale):
            return paged_extend_attention(
                q, cache, meta.block_tables, meta.seq_lens, meta.query_start_loc, d**-0.5,
                max_query_len=qlen, kv_scale=kv_scale,
            )  # fmt: skip

        outs[name] = call()
        row[f"{name}_ms"] = time_cuda(call, 3 if smoke else 20, flush)
    ref = TorchAttentionBackend().forward(q, cache8, meta, d**-0.5, kv_scale=default_kv_scale(DEV))
    row["fp8_vs_torch_rel_err"] = _rel(outs["fp8"], ref)
    row["fp8_vs_bf16_rel_err"] = _rel(outs["fp8"], outs["bf16"])
    row["speedup"] = row["bf16_ms"] / row["fp8_ms"]
    return row


def _model(smoke: bool, tmp: str) -> str:
    """The preset's config (dummy weights), or for --smoke a tiny random Qwen3 config."""
    if not smoke:
        return workloads.preset_path("qwen3-0.6b")
    cfg = json.loads(Path(workloads.preset_path("qwen3-0.6b")).read_text())
    cfg.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, head_dim=32, vocab_size=10240)  # fmt: skip
    path = Path(tmp, "tiny-qwen3.json")
    path.write_text(json.dumps(cfg))
    return str(path)


def _engine(model: str, smoke: bool, kv_cache_dtype: str, **extra) -> LLMEngine:
    """An engine as ``pagedllm bench throughput --dummy`` builds it (defaults otherwise)."""
    options = dict(model=model, load_format="dummy", kv_cache_dtype=kv_cache_dtype, **extra)
    if smoke:
        options.update(dtype="float32", kv_cache_memory=64 << 20)
    return LLMEngine.from_config(EngineConfig.from_flat(**options))


@section("greedy")
def greedy(smoke: bool, model: str) -> dict:
    num, length, new = (2, 40, 8) if smoke else (8, 1024, 64)
    prompts = workloads.long_prompts(num, length, seed=11)
    tokens = {}
    for kv in KV_DTYPES:
        engine = _engine(model, smoke, kv)
        params = SamplingParams(temperature=0.0, max_tokens=new, ignore_eos=True)
        for i, p in enumerate(prompts):
            engine.add_request(f"g{i}", None, params, prompt_token_ids=p, stream=False)
        done = {}
        while engine.has_unfinished_requests():
            for o in engine.step():
                if o.finished:
                    done[o.request_id] = o.outputs[0].token_ids
        tokens[kv] = [done[f"g{i}"] for i in range(num)]
        del engine
        _release()
    pairs = list(zip(tokens["auto"], tokens["fp8"], strict=True))
    first = [
        next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), new)
        for a, b in pairs
    ]
    equal = sum(x == y for a, b in pairs for x, y in zip(a, b, strict=True))
    return {"prompts": f"{num} x {length}", "new": new, "token_agreement": equal / (num * new),
            "first_divergence": first}  # fmt: skip


@section("w1")
def w1(smoke: bool, model: str) -> dict:
    load = workloads.w1()
    if smoke:
        load = workloads.Workload("W1 smoke", [p[:32] for p in load.prompts[:4]], [4] * 4)
    out = {}
    for kv in KV_DTYPES:
        engine = _engine(model, smoke, kv)
        result = run_workload(engine, load, temperature=0.6).as_dict()
        result["kv_blocks"] = engine.scheduler.kv_manager.num_blocks
        out["bf16" if kv == "auto" else kv] = result
        del engine
        _release()
    out["fp8_over_bf16_tok_s"] = out["fp8"]["output_tok_s"] / out["bf16"]["output_tok_s"]
    return out


@section("long")
def long(smoke: bool, model: str) -> dict:
    spec = workloads.LONG_WORKLOADS["long"]
    if smoke:
        spec = workloads.LongSpec("W-long smoke", 2, 48, 4, spec.preset)
    out = {}
    for kv in KV_DTYPES:
        engine = _engine(model, smoke, kv, max_model_len=spec.length + spec.new)
        result = run_long_workload(engine, spec)
        result["kv_blocks"] = engine.scheduler.kv_manager.num_blocks
        out["bf16" if kv == "auto" else kv] = result
        del engine
        _release()
    out["fp8_over_bf16_decode_speedup"] = (
        out["bf16"]["decode_ms_per_step"] / out["fp8"]["decode_ms_per_step"]
    )
    if out["bf16"]["decode_step_ms_p50"] and out["fp8"]["decode_step_ms_p50"]:
        out["fp8_over_bf16_steady_decode_speedup"] = (
            out["bf16"]["decode_step_ms_p50"] / out["fp8"]["decode_step_ms_p50"]
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=".", help="directory for fp8_kv_gpu.json")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (CPU plumbing check)")
    ap.add_argument("--skip", default="", help="comma-separated section names to skip")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    RESULTS["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        model = _model(args.smoke, tmp)
        for name, fn, extra in (
            ("copy_bandwidth", copy_bandwidth, ()),
            ("decode_kernel", decode_kernel, ()),
            ("extend_kernel", extend_kernel, ()),
            ("greedy", greedy, (model,)),
            ("w1", w1, (model,)),
            ("long", long, (model,)),
        ):
            if name not in skip:
                fn(args.smoke, *extra)
                # after every section, so a run cut short by a time limit keeps what it measured
                Path(args.out).mkdir(parents=True, exist_ok=True)
                Path(args.out, "fp8_kv_gpu.json").write_text(
                    json.dumps(RESULTS, indent=1, default=str)
                )
    print(json.dumps(RESULTS, indent=1, default=str)[-10000:])


if __name__ == "__main__":
    main()
