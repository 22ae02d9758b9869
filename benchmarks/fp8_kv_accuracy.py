"""FP8 KV cache accuracy on CPU: the bundled SmolLM2-135M (real weights), fp8 KV vs fp32 KV.

    PYTHONPATH=src python3 benchmarks/fp8_kv_accuracy.py --out benchmarks/results/fp8_kv_accuracy.json

Prompts are real English text (this repository's docs, cut to ``--lengths`` tokens). These KV
caches run the same float32 model:

* ``fp32``: the reference;
* ``fp8``: e4m3 pages with k_scale = v_scale = 1.0 (the default, as in vLLM);
* ``fp8-calibrated``: per-layer scales amax / 448 measured on the reference run of the *same*
  prompts (an upper bound on what calibrating from a first prefill could buy);
* ``bf16``: bfloat16 pages, for scale: the drift of the usual half-precision cache.

``--variants`` picks among them (the fp32 reference always runs).

Per prompt it records, teacher-forced over the prompt (``prompt_logprobs``; the prefill reads
every key back from the pages, so the fp8 rounding is in these numbers): the mean and max
|logprob difference| of the actual next token and the agreement of the top-1 prediction; then
greedy decoding of ``--new`` tokens: tokens equal to the reference's, and the first divergence.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from pagedllm import LLM, SamplingParams  # noqa: E402
from pagedllm.attention.kv_quant import FP8_MAX  # noqa: E402
from pagedllm.layers.attention import Attention  # noqa: E402

VARIANTS = {"fp8": "fp8", "fp8-calibrated": "fp8", "bf16": "bfloat16"}  # name -> kv_cache_dtype
SOURCES = ["docs/architecture.md", "README.md", "docs/studies.md", "benchmarks/RESULTS.md"]


def make_prompts(llm: LLM, lengths: list[int]) -> list[list[int]]:
    """One prompt per length, each cut from a different document of this repository."""
    prompts = []
    for i, n in enumerate(lengths):
        text = (ROOT / SOURCES[i % len(SOURCES)]).read_text()
        ids = llm.tokenizer.encode(text)
        if len(ids) < n:
            raise ValueError(f"{SOURCES[i % len(SOURCES)]} has only {len(ids)} tokens, not {n}")
        prompts.append(ids[:n])
    return prompts


def layers(llm: LLM) -> list[Attention]:
    model = llm.engine.runner.model
    return sorted((m for m in model.modules() if isinstance(m, Attention)),
                  key=lambda m: m.layer_idx)  # fmt: skip


def record_amax(llm: LLM) -> list[list[float]]:
    """Wrap the backend's write_kv so every layer's K and V amax is recorded (per layer)."""
    backend = llm.engine.runner.backend
    amax: dict[int, list[float]] = {}
    write = backend.write_kv
    caches = llm.engine.runner.cache.kv_caches

    def recording(key, value, kv_cache, slot_mapping, kv_scale=None):
        idx = next(i for i, c in enumerate(caches) if c is kv_cache)
        old = amax.get(idx, [0.0, 0.0])
        amax[idx] = [max(old[0], key.abs().max().item()), max(old[1], value.abs().max().item())]
        write(key, value, kv_cache, slot_mapping, kv_scale=kv_scale)

    backend.write_kv = recording
    return amax  # filled as the engine runs


def run(llm: LLM, prompts: list[list[int]], new: int) -> list[dict]:
    params = SamplingParams(max_tokens=new, temperature=0.0, ignore_eos=True, prompt_logprobs=1)
    outs = llm.generate(prompts, params)  # lists of ids are token prompts
    result = []
    for prompt, out in zip(prompts, outs, strict=True):
        actual, top1 = [], []
        for pos, entry in enumerate(out.prompt_logprobs[1:], start=1):
            actual.append(entry[prompt[pos]])
            top1.append(max(entry, key=entry.get))
        result.append({"actual": actual, "top1": top1, "tokens": out.outputs[0].token_ids})
    return result


def compare(ref: list[dict], got: list[dict]) -> list[dict]:
    rows = []
    for r, g in zip(ref, got, strict=True):
        diffs = [abs(a - b) for a, b in zip(r["actual"], g["actual"], strict=True)]
        same_top1 = sum(a == b for a, b in zip(r["top1"], g["top1"], strict=True))
        first = next((i for i, (a, b) in enumerate(zip(r["tokens"], g["tokens"], strict=True)) if a != b),
                     len(r["tokens"]))  # fmt: skip
        rows.append({
            "prompt_tokens": len(r["actual"]) + 1,
            "mean_abs_logprob_diff": statistics.fmean(diffs),
            "max_abs_logprob_diff": max(diffs),
            "top1_agreement": same_top1 / len(diffs),
            "greedy_equal_tokens": sum(a == b for a, b in zip(r["tokens"], g["tokens"], strict=True)),
            "greedy_tokens": len(r["tokens"]),
            "greedy_first_divergence": first,
        })  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--lengths", default="1024,2048", help="prompt lengths in tokens")
    ap.add_argument("--new", type=int, default=32, help="greedy tokens generated per prompt")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}"
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lengths = [int(x) for x in args.lengths.split(",")]
    common = {"dtype": "float32", "device": "cpu", "max_model_len": max(lengths) + args.new + 16,
              "kv_cache_memory": 256 << 20, "enable_prefix_caching": False}  # fmt: skip
    report: dict = {"model": "bundled SmolLM2-135M-Instruct (real weights), float32",
                    "lengths": lengths, "new_tokens": args.new, "variants": {}}  # fmt: skip
    t0 = time.perf_counter()
    ref_llm = LLM(kv_cache_dtype="auto", **common)
    prompts = make_prompts(ref_llm, lengths)
    amax = record_amax(ref_llm)
    ref = run(ref_llm, prompts, args.new)
    report["kv_amax_per_layer"] = [amax[i] for i in sorted(amax)]
    del ref_llm
    for name in args.variants.split(","):
        if name not in VARIANTS:
            raise ValueError(f"--variants: unknown {name!r}; choose from {', '.join(VARIANTS)}")
        llm = LLM(kv_cache_dtype=VARIANTS[name], **common)
        if name == "fp8-calibrated":
            for layer, (k, v) in zip(layers(llm), report["kv_amax_per_layer"], strict=True):
                layer.kv_scale.copy_(torch.tensor([k / FP8_MAX, v / FP8_MAX]))
        rows = compare(ref, run(llm, prompts, args.new))
        report["variants"][name] = {
            "per_prompt": rows,
            "mean_abs_logprob_diff": statistics.fmean(r["mean_abs_logprob_diff"] for r in rows),
            "max_abs_logprob_diff": max(r["max_abs_logprob_diff"] for r in rows),
            "top1_agreement": statistics.fmean(r["top1_agreement"] for r in rows),
            "greedy_agreement": sum(r["greedy_equal_tokens"] for r in rows)
            / sum(r["greedy_tokens"] for r in rows),
        }
        del llm
    report["seconds"] = time.perf_counter() - t0
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"{'variant':16} {'mean|dlp|':>10} {'max|dlp|':>9} {'top1':>6} {'greedy':>7}")
    for name, v in report["variants"].items():
        print(f"{name:16} {v['mean_abs_logprob_diff']:10.4f} {v['max_abs_logprob_diff']:9.3f} "
              f"{v['top1_agreement']:6.3f} {v['greedy_agreement']:7.3f}")  # fmt: skip
    print("first divergence per prompt:",
          {n: [r["greedy_first_divergence"] for r in v["per_prompt"]]
           for n, v in report["variants"].items()})  # fmt: skip
    print(f"{report['seconds']:.0f} s")


if __name__ == "__main__":
    main()
