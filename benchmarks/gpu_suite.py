"""One GPU session: correctness of the GPU path, then W1 (pagedllm and transformers' peer).

Run on the GPU machine (no install): ``PYTHONPATH=src python3 benchmarks/gpu_suite.py --out $OUT``.
Sections run in order, each in try/except so one failure does not lose the rest; results go to
``$OUT/gpu_suite.json`` after every section.

- ``correctness``: the SmolLM2-135M architecture (config of the bundled model; the bundled
  98 MB weights cannot travel to the GPU machine, so transformers' seeded random init is used)
  through pagedllm on the GPU (Triton kernels, CUDA graphs) vs transformers on the same GPU:
  greedy tokens in float32 and in bfloat16 (agreement up to the first near-tie).
- ``w1``: DESIGN.md's W1 (Qwen3-0.6B architecture, dummy bf16 weights, 256 requests).
- ``w1_peer``: transformers ``generate_batch`` (paged|sdpa) on the first W1 prompts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from pagedllm import LLM, SamplingParams  # noqa: E402
from pagedllm.benchmark import workloads  # noqa: E402
from pagedllm.benchmark.throughput import run_workload  # noqa: E402

RESULTS: dict = {}


def save(out: Path) -> None:
    (out / "gpu_suite.json").write_text(json.dumps(RESULTS, indent=1, default=str))


def section(name: str, out: Path):
    def wrap(fn):
        def run(*a, **k):
            t = time.perf_counter()
            print(f"\n===== {name} =====", flush=True)
            try:
                RESULTS[name] = fn(*a, **k)
            except Exception as exc:  # noqa: BLE001 - keep going, report the failure
                traceback.print_exc()
                RESULTS[name] = {"error": f"{type(exc).__name__}: {exc}"}
            RESULTS[name + "_seconds"] = round(time.perf_counter() - t, 1)
            print(json.dumps(RESULTS[name], default=str)[:3000], flush=True)
            save(out)

        return run

    return wrap


def smollm_hf_dir() -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = json.loads((ROOT / "benchmarks/configs/smollm2-135m.json").read_text())
    cfg.pop("architectures"), cfg.pop("torch_dtype", None)
    torch.manual_seed(0)
    config = LlamaConfig(**cfg)
    config.initializer_range = 0.2  # peaked logits: fewer exact near-ties than std 0.02
    model = LlamaForCausalLM(config)
    path = tempfile.mkdtemp(prefix="smollm2-random-")
    model.save_pretrained(path, safe_serialization=True)
    return path


def hf_greedy(path: str, prompts: list[list[int]], max_new: int, dtype) -> list[list[int]]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).cuda().eval()
    outs = []
    with torch.inference_mode():
        for p in prompts:
            ids = torch.tensor([p], device="cuda")
            o = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
            )
            outs.append(o[0, len(p) :].tolist())
    del model
    torch.cuda.empty_cache()
    return outs


def first_divergence(a: list[int], b: list[int]) -> int:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))


def correctness() -> dict:
    path = smollm_hf_dir()
    rng = torch.Generator().manual_seed(1)
    lens = [5, 17, 64, 130, 333, 700, 1000, 9]
    prompts = [torch.randint(0, 49152, (n,), generator=rng).tolist() for n in lens]
    max_new = 32
    report = {}
    for dtype_name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        ref = hf_greedy(path, prompts, max_new, dtype)
        for eager in (False, True):
            llm = LLM(
                path, dtype=dtype_name, kv_cache_memory=2 << 30, block_size=16, enforce_eager=eager
            )
            params = SamplingParams(temperature=0, max_tokens=max_new, ignore_eos=True)
            outs = llm.generate(prompts, params, use_tqdm=False)
            got = [o.outputs[0].token_ids for o in outs]
            div = [first_divergence(g, r) for g, r in zip(got, ref, strict=True)]
            kv = llm.engine.scheduler.kv_manager
            report[f"{dtype_name}{'_eager' if eager else '_graphs'}"] = {
                "identical": sum(d == max_new for d in div),
                "of": len(prompts),
                "first_divergence": div,
                "blocks_free_after": kv.num_free_blocks == kv.num_blocks,
            }
            del llm
            torch.cuda.empty_cache()
    return report


def multi_step_check(steps: int) -> dict:
    """Greedy tokens equal single synchronous steps with multi-step rounds and with async
    scheduling, alone and together (float32, CUDA graphs)."""
    path = smollm_hf_dir()
    rng = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, 49152, (n,), generator=rng).tolist() for n in (5, 40, 300, 900)]
    params = [
        SamplingParams(temperature=0, max_tokens=20 + 7 * i, ignore_eos=True)
        for i in range(len(prompts))
    ]
    got = {}
    for k, overlap in ((1, False), (steps, False), (1, True), (steps, True)):
        llm = LLM(
            path,
            dtype="float32",
            kv_cache_memory=2 << 30,
            num_scheduler_steps=k,
            async_scheduling=overlap,
        )
        outs = llm.generate(prompts, params, use_tqdm=False)
        got[(k, overlap)] = [o.outputs[0].token_ids for o in outs]
        del llm
        torch.cuda.empty_cache()
    base = got[(1, False)]
    return {
        "steps": steps,
        "identical": {f"steps{k}_async{a}": toks == base for (k, a), toks in got.items()},
    }


def throughput(
    preset: str,
    load: workloads.Workload,
    block_size: int,
    eager: bool = False,
    steps: int = 1,
    overlap: bool | None = None,
) -> dict:
    """One offline run of ``load`` on a dummy-weight preset (bf16)."""
    llm = LLM(
        workloads.preset_path(preset),
        load_format="dummy",
        dtype="bfloat16",
        block_size=block_size,
        max_num_seqs=256,
        max_num_batched_tokens=16384,
        max_model_len=4096,
        enforce_eager=eager,
        num_scheduler_steps=steps,
        async_scheduling=overlap,
    )
    res = run_workload(llm.engine, load, temperature=0.6).as_dict()
    res["kv_blocks_total"] = llm.engine.scheduler.kv_manager.num_blocks
    res["num_scheduler_steps"] = steps
    res["async_scheduling"] = llm.engine.async_scheduling
    del llm
    torch.cuda.empty_cache()
    return res


def w1(num: int | None, block_size: int, eager: bool = False, steps: int = 1, overlap=None) -> dict:
    load = workloads.w1()
    return throughput(
        "qwen3-0.6b", load.head(num) if num else load, block_size, eager, steps, overlap
    )


def w2(num: int | None, steps: int = 1, overlap=None) -> dict:
    load = workloads.w2()
    return throughput("qwen3-8b", load.head(num) if num else load, 16, steps=steps,
                      overlap=overlap)  # fmt: skip


def w1_peer(num: int, max_new: int) -> dict:
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    cfg = AutoConfig.from_pretrained(workloads.preset_path("qwen3-0.6b"))
    torch.manual_seed(0)
    model = (
        AutoModelForCausalLM.from_config(
            cfg, dtype=torch.bfloat16, attn_implementation="paged|sdpa"
        )
        .cuda()
        .eval()
    )
    prompts = workloads.w1().prompts[:num]
    gen = GenerationConfig(
        max_new_tokens=max_new, do_sample=True, temperature=0.6, eos_token_id=-1, pad_token_id=0
    )
    model.generate_batch(inputs=prompts[:2], generation_config=gen)  # warm-up
    torch.cuda.synchronize()
    t = time.perf_counter()
    outs = model.generate_batch(inputs=prompts, generation_config=gen)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t
    tokens = sum(len(o.generated_tokens) for o in outs.values())
    return {
        "requests": num,
        "max_new_tokens": max_new,
        "output_tokens": tokens,
        "elapsed_s": dt,
        "output_tok_s": tokens / dt,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--sections", default="correctness,w1,w1_peer")
    ap.add_argument("--w1-num", type=int, default=None)
    ap.add_argument("--w2-num", type=int, default=None)
    ap.add_argument("--steps", default="1", help="num_scheduler_steps values (W1; max for W2)")
    ap.add_argument("--peer-num", type=int, default=32)
    ap.add_argument("--peer-max-new", type=int, default=256)
    ap.add_argument("--block-sizes", default="16")
    ap.add_argument("--async", dest="overlap", default="on", help="async scheduling: on,off")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    RESULTS["device"] = torch.cuda.get_device_name(0)
    RESULTS["torch"] = torch.__version__
    wanted = args.sections.split(",")
    if "correctness" in wanted:
        section("correctness", out)(correctness)()
    steps = [int(k) for k in args.steps.split(",")]
    if "multi_step_check" in wanted:
        section("multi_step_check", out)(multi_step_check)(max(steps))
    if "w1" in wanted:
        for bs in [int(s) for s in args.block_sizes.split(",")]:
            for k in steps:
                for mode in args.overlap.split(","):
                    name = f"w1_block{bs}_steps{k}_async{mode}"
                    section(name, out)(w1)(args.w1_num, bs, False, k, mode == "on")
    if "w1_eager" in wanted:
        section("w1_eager", out)(w1)(args.w1_num, 16, True)
    if "w2" in wanted:
        for mode in args.overlap.split(","):
            name = f"w2_steps{max(steps)}_async{mode}"
            section(name, out)(w2)(args.w2_num, max(steps), mode == "on")
    if "w1_peer" in wanted:
        section("w1_peer", out)(w1_peer)(args.peer_num, args.peer_max_new)
    save(out)


if __name__ == "__main__":
    main()
