"""Beam search study: KV blocks per beam group with and without page sharing, and native beam
search vs a beam search built outside the engine (vLLM v1's way).

``PYTHONPATH=src python3 benchmarks/beam_study.py --out DIR`` (CPU: the bundled model in
float32; ``--device cuda`` on a GPU: the Qwen3-0.6B architecture with dummy bf16 weights).

1. Sharing. Each step of a native beam search, for each beam group: the distinct KV blocks its
   live beams hold (pages shared copy-on-write) and the blocks they would hold with private
   copies (the sum of their block-table lengths). The saving is 1 - shared / private, averaged
   over the steps (the PagedAttention paper's figure: 37.6-55.2% for beam search).
2. Throughput. The same searches (``ignore_eos``, so every search runs ``max_tokens`` steps)
   natively (``LLM.beam_search``: beams are forked requests in one continuous batch) and
   outside the engine: each step every live beam becomes a new one-token request (prompt +
   beam tokens, ``logprobs=2k``) that rides the prefix cache, and the same selection rule
   (``BeamSearch.step``) picks the next beams. Both must return the same sequences (checked
   first); then wall time and beam tokens/s (beams x tokens per search / time) are compared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from pagedllm import LLM, SamplingParams
from pagedllm.benchmark import workloads
from pagedllm.engine.beam_group import BeamGroup
from pagedllm.engine.beam_search import BeamSearch, BeamSearchParams


def make_llm(args: argparse.Namespace) -> LLM:
    if args.device == "cpu":
        model = args.model  # None: the bundled model
        return LLM(model, device="cpu", dtype="float32", block_size=args.block_size,
                   num_gpu_blocks=args.num_blocks, max_num_seqs=256)  # fmt: skip
    return LLM(workloads.preset_path("qwen3-0.6b"), load_format="dummy", dtype=args.dtype,
               block_size=args.block_size, max_model_len=4096)  # fmt: skip


def prompts(args: argparse.Namespace, vocab: int) -> list[list[int]]:
    import random

    rng = random.Random(0)
    return [[rng.randrange(100, min(vocab, 10000)) for _ in range(rng.randint(*args.prompt_len))]
            for _ in range(args.num_prompts)]  # fmt: skip


def sharing(llm: LLM, batch: list[list[int]], width: int, max_tokens: int) -> dict:
    """Distinct vs private blocks of every live beam group, after every step."""
    engine = llm.engine
    kv = engine.scheduler.kv_manager
    params = BeamSearchParams(width, max_tokens, ignore_eos=True)
    for i, p in enumerate(batch):
        engine.add_request(f"share-{width}-{i}", None, params, prompt_token_ids=p)
    shared_sum = private_sum = 0
    ratios = []
    while engine.has_unfinished_requests():
        engine.step()
        for group in list(engine._groups.values()):  # noqa: SLF001 - a study of internals
            if not isinstance(group, BeamGroup) or len(group.beams) < 2:
                continue
            tables = [kv.get_block_table(b.request.request_id) for b in group.beams
                      if b.request.request_id in engine.scheduler.requests]  # fmt: skip
            if not tables:
                continue
            shared = len({blk for t in tables for blk in t})
            private = sum(len(t) for t in tables)
            shared_sum += shared
            private_sum += private
            ratios.append(1 - shared / private)
    return {
        "beam_width": width,
        "mean_blocks_shared": shared_sum / max(len(ratios), 1),
        "mean_blocks_private": private_sum / max(len(ratios), 1),
        "saving_mean": statistics.mean(ratios) if ratios else 0.0,
        "saving_total": 1 - shared_sum / private_sum if private_sum else 0.0,
    }


def outside_beam_search(llm: LLM, prompt_ids: list[list[int]], width: int, max_tokens: int):
    """vLLM v1's way: each step, each live beam is a new request of one token."""
    searches = [BeamSearch(width, max_tokens, 1.0, frozenset()) for _ in prompt_ids]
    beams = [[([], 0.0)] for _ in prompt_ids]  # per prompt: (tokens, summed logprob)
    params = SamplingParams(temperature=0.0, max_tokens=1, logprobs=2 * width, ignore_eos=True)
    while any(not s.done for s in searches):
        live = [(i, b) for i, s in enumerate(searches) if not s.done for b in beams[i]]
        outs = llm.generate([prompt_ids[i] + toks for i, (toks, _) in live], params,
                            use_tqdm=False)  # fmt: skip
        per_prompt: dict[int, list] = {}
        for (i, beam), out in zip(live, outs, strict=True):
            per_prompt.setdefault(i, []).append((beam, out.outputs[0].logprobs[0]))
        for i, rows in per_prompt.items():
            choices = searches[i].step([b[1] for b, _ in rows], [b[0] for b, _ in rows],
                                       [lp for _, lp in rows])  # fmt: skip
            beams[i] = [(rows[c.parent][0][0] + [c.token], c.score) for c in choices]
    return [[h.token_ids for h in s.finished] for s in searches]


def throughput(llm: LLM, batch: list[list[int]], width: int, max_tokens: int) -> dict:
    params = BeamSearchParams(width, max_tokens, ignore_eos=True)
    llm.beam_search(batch[:1], BeamSearchParams(width, 2, ignore_eos=True))  # warm-up
    start = time.perf_counter()
    native = llm.beam_search(batch, params)
    t_native = time.perf_counter() - start
    start = time.perf_counter()
    outside = outside_beam_search(llm, batch, width, max_tokens)
    t_outside = time.perf_counter() - start
    equal = [[s.output_token_ids for s in o.sequences] for o in native] == outside
    beam_tokens = len(batch) * width * max_tokens
    return {
        "beam_width": width,
        "same_sequences": equal,
        "native_s": t_native,
        "outside_s": t_outside,
        "native_beam_tok_s": beam_tokens / t_native,
        "outside_beam_tok_s": beam_tokens / t_outside,
        "speedup": t_outside / t_native,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default=None)
    ap.add_argument("--dtype", default="bfloat16", help="GPU only (the CPU runs float32)")
    ap.add_argument("--widths", default="2,4,8")
    ap.add_argument("--num-prompts", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, nargs=2, default=(32, 256))
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--num-blocks", type=int, default=4096)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.widths, args.num_prompts, args.prompt_len, args.max_tokens = "2,4", 2, (8, 24), 4
    llm = make_llm(args)
    batch = prompts(args, llm.engine.vocab_size)
    result: dict = {"args": {k: v for k, v in vars(args).items()}, "sharing": [], "speed": []}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for width in (int(w) for w in args.widths.split(",")):
        result["sharing"].append(sharing(llm, batch, width, args.max_tokens))
        result["speed"].append(throughput(llm, batch, width, args.max_tokens))
        (out / "beam_study.json").write_text(json.dumps(result, indent=1, default=str))
    print(f"{'k':>3} {'shared':>8} {'private':>8} {'saving':>7} | {'native s':>9} "
          f"{'outside s':>9} {'speedup':>7} {'same':>5}")  # fmt: skip
    for sh, sp in zip(result["sharing"], result["speed"], strict=True):
        print(f"{sh['beam_width']:3d} {sh['mean_blocks_shared']:8.1f} "
              f"{sh['mean_blocks_private']:8.1f} {sh['saving_mean']:7.1%} | "
              f"{sp['native_s']:9.2f} {sp['outside_s']:9.2f} {sp['speedup']:7.2f} "
              f"{str(sp['same_sequences']):>5}")  # fmt: skip
    kv = llm.engine.scheduler.kv_manager
    assert kv.num_free_blocks == kv.num_blocks, "blocks leaked"


if __name__ == "__main__":
    main()
