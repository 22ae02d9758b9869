"""W1 before and after a change, in one GPU session: each tree in its own fresh process.

``PYTHONPATH=src python3 benchmarks/w1_ab.py --src OLD_TREE --src . --out $OUT``

Each ``--src`` is a checkout (its ``src/`` is used) or a ``src`` directory; pagedllm is imported
from it in a child process (``--child``), so the two trees never mix. First a correctness
check: the first 16 W1 prompts, greedy (temperature 0) with 64 output tokens, must give the
same tokens in every tree. Then W1 (DESIGN.md: Qwen3-0.6B architecture, dummy bf16 weights, 256
requests, temperature 0.6, one warm-up request) ``--rounds`` times, alternating the trees
(A B A B ...) so drifting clocks hit both; the table reports each tree's median output tok/s
and the ratio to the first tree. JSON goes to ``$OUT/w1_ab.json``. ``--smoke`` runs a tiny
Llama-shaped dummy model on 4 short requests (CPU test of the script itself).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _src_dir(tree: str) -> Path:
    path = Path(tree).resolve()
    return path / "src" if (path / "src" / "pagedllm").is_dir() else path


def child(args: argparse.Namespace) -> None:
    """Runs inside the tree's process: prints one JSON line."""
    import torch

    from pagedllm import LLM, SamplingParams
    from pagedllm.benchmark import workloads
    from pagedllm.benchmark.throughput import run_workload

    load = workloads.w1()
    options: dict = dict(load_format="dummy", max_model_len=4096, max_num_seqs=256,
                         max_num_batched_tokens=16384)  # fmt: skip
    if args.smoke:
        load = load.head(4)
        load.prompts = [p[:40] for p in load.prompts]
        load.output_lens = [8] * 4
        options.update(device="cpu", dtype="float32", num_gpu_blocks=64, max_num_seqs=8,
                       max_num_batched_tokens=256, max_model_len=128)  # fmt: skip
    else:
        options.update(dtype="bfloat16")
    model = args.preset if args.preset.endswith(".json") else workloads.preset_path(args.preset)
    llm = LLM(model, **options)
    check = llm.generate(
        [p[:64] for p in load.prompts[:16]],
        SamplingParams(temperature=0.0, max_tokens=8 if args.smoke else 64, ignore_eos=True),
        use_tqdm=False,
    )
    result = {"check_tokens": [o.outputs[0].token_ids for o in check]}
    if args.mode == "time":
        result["w1"] = run_workload(llm.engine, load, temperature=0.6).as_dict()
    result["pagedllm_file"] = sys.modules["pagedllm"].__file__
    print("RESULT " + json.dumps(result), flush=True)
    del llm
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_tree(tree: str, mode: str, args: argparse.Namespace) -> dict:
    env = dict(os.environ, PYTHONPATH=str(_src_dir(tree)))
    cmd = [sys.executable, __file__, "--child", "--mode", mode, "--preset", args.preset]
    cmd += ["--smoke"] if args.smoke else []
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{tree} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", action="append", help="a tree (or its src/); give two or more")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--preset", default="qwen3-0.6b")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--mode", default="time")
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    trees = args.src or ["."]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        args.preset = _tiny_preset(out)
    report: dict = {"trees": trees, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "runs": []}
    tokens = None
    for r in range(args.rounds):
        for tree in trees:
            res = run_tree(tree, "time", args)
            print(f"round {r} {tree}: {res['w1']['output_tok_s']:.0f} tok/s "
                  f"({res['pagedllm_file']})", flush=True)  # fmt: skip
            if tokens is None:
                tokens = res["check_tokens"]
            res["check_equal"] = res.pop("check_tokens") == tokens
            report["runs"].append({"tree": tree, "round": r, **res})
            (out / "w1_ab.json").write_text(json.dumps(report, indent=1))
    print(f"\n{'tree':40s} {'median tok/s':>12s} {'ratio':>7s} {'greedy equal':>12s}")
    base = None
    for tree in trees:
        runs = [x for x in report["runs"] if x["tree"] == tree]
        med = statistics.median(x["w1"]["output_tok_s"] for x in runs)
        base = base or med
        equal = all(x["check_equal"] for x in runs)
        print(f"{tree:40s} {med:12.0f} {med / base:7.3f} {str(equal):>12s}")
        report.setdefault("summary", {})[tree] = {"median_tok_s": med, "greedy_equal": equal}
    (out / "w1_ab.json").write_text(json.dumps(report, indent=1))


def _tiny_preset(out: Path) -> str:
    """The W1 architecture shrunk to a few MB (smoke runs on CPU)."""
    root = Path(__file__).resolve().parent.parent / "src" / "pagedllm" / "presets"
    config = json.loads((root / "qwen3-0.6b.json").read_text())
    config.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16)  # fmt: skip
    path = out / "tiny-qwen3.json"
    path.write_text(json.dumps(config))
    return str(path)


if __name__ == "__main__":
    main()
