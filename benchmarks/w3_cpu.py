"""W3 (DESIGN.md section 4): the bundled SmolLM2-135M on CPU, pagedllm vs transformers.

32 chat prompts of mixed length, max_tokens=64 with ignore_eos, greedy. The peer is
transformers ``generate()`` in static padded batches (left padding), at batch 8 and 32, in
bfloat16 and float32; its best configuration is the one to beat. Same machine, same run.

    PYTHONPATH=src python benchmarks/w3_cpu.py [--skip-peer] [--dtypes bfloat16,float32]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from pagedllm import LLM, SamplingParams
from pagedllm.benchmark.workloads import w3_conversations

MAX_NEW = 64


def run_pagedllm(dtype: str, block_size: int) -> dict:
    llm = LLM(dtype=dtype, block_size=block_size, kv_cache_memory=512 << 20)
    prompts = [llm.encode_chat(c) for c in w3_conversations()]
    params = SamplingParams(temperature=0.0, max_tokens=MAX_NEW, ignore_eos=True)
    llm.generate(prompts[:1], SamplingParams(max_tokens=4), use_tqdm=False)  # warm-up
    start = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    return {
        "engine": "pagedllm",
        "dtype": dtype,
        "block_size": block_size,
        "prompt_tokens": sum(map(len, prompts)),
        "output_tokens": tokens,
        "elapsed_s": round(elapsed, 2),
        "output_tok_s": round(tokens / elapsed, 1),
    }


def run_transformers(dtype: str, batch: int, prompts: list[list[int]]) -> dict:
    from transformers import AutoModelForCausalLM

    from pagedllm.loader.bundled import bundled_model_path

    path = bundled_model_path()
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=getattr(torch, dtype)
    ).eval()
    tokens = 0
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(prompts), batch):
            chunk = prompts[i : i + batch]
            width = max(map(len, chunk))
            ids = torch.tensor([[2] * (width - len(p)) + p for p in chunk])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
            out = model.generate(
                ids,
                attention_mask=mask,
                max_new_tokens=MAX_NEW,
                min_new_tokens=MAX_NEW,
                do_sample=False,
                pad_token_id=2,
            )
            tokens += (out.shape[1] - width) * len(chunk)
    elapsed = time.perf_counter() - start
    return {
        "engine": "transformers",
        "dtype": dtype,
        "batch": batch,
        "output_tokens": tokens,
        "elapsed_s": round(elapsed, 2),
        "output_tok_s": round(tokens / elapsed, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    rows = [run_pagedllm(d, args.block_size) for d in args.dtypes.split(",")]
    for row in rows:
        print(row, flush=True)
    if not args.skip_peer:
        llm_tok = LLM(dtype="float32", kv_cache_memory=16 << 20)
        prompts = [llm_tok.encode_chat(c) for c in w3_conversations()]
        del llm_tok
        for dtype in args.dtypes.split(","):
            for batch in (8, 32):
                rows.append(run_transformers(dtype, batch, prompts))
                print(rows[-1], flush=True)
    ours = max(r["output_tok_s"] for r in rows if r["engine"] == "pagedllm")
    peers = [r["output_tok_s"] for r in rows if r["engine"] == "transformers"]
    summary = {"rows": rows, "pagedllm_best": ours}
    if peers:
        summary["transformers_best"] = max(peers)
        summary["ratio"] = round(ours / max(peers), 2)
    print(json.dumps(summary, indent=1))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
