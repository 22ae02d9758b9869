"""Where W1's wall time goes on the GPU: device busy time vs host time, and top kernels.

    PYTHONPATH=src python3 benchmarks/profile_gpu_w1.py --steps 1,8 [--out DIR]

For each ``num_scheduler_steps`` value: one full W1 run timed (engine steps split into time
blocked in the step's host sync vs the rest), then a torch-profiler window of ``--window``
engine steps in steady-state decode giving the GPU busy fraction (kernel time / wall) and the
kernels that take it. Output: a JSON summary and a printed table per setting.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from pagedllm import LLM  # noqa: E402
from pagedllm.benchmark import workloads  # noqa: E402
from pagedllm.benchmark.throughput import run_workload  # noqa: E402
from pagedllm.sampling_params import SamplingParams  # noqa: E402
from profile_steps import profile_window  # noqa: E402


def make_llm(steps: int, block_size: int, **extra) -> LLM:
    return LLM(
        workloads.preset_path("qwen3-0.6b"),
        load_format="dummy",
        dtype="bfloat16",
        block_size=block_size,
        max_num_batched_tokens=16384,
        max_model_len=4096,
        num_scheduler_steps=steps,
        **extra,
    )


def kernel_window(llm: LLM, load, skip: int, window: int) -> dict:
    """Profile ``window`` engine steps after ``skip`` steps of a W1 run."""
    engine = llm.engine
    for i, (prompt, n) in enumerate(zip(load.prompts, load.output_lens, strict=True)):
        params = SamplingParams(temperature=0.6, max_tokens=n, ignore_eos=True)
        engine.add_request(f"p-{i}", None, params, prompt_token_ids=prompt, stream=False)
    for _ in range(skip):
        engine.step()
    out = profile_window(engine, window)
    batch = engine.scheduler.num_running
    while engine.has_unfinished_requests():
        engine.step()
    out["batch_after"] = batch
    return out


def timed_run(llm: LLM, load) -> dict:
    """One W1 run with each engine step's time split at the runner's host sync.

    The sync is a ``.tolist()`` of a CUDA tensor without async scheduling; with it, the wait
    is in ``PendingStep.collect`` (an event) and ``sync_s`` stays near zero.
    """
    engine = llm.engine
    waits = {"sync_s": 0.0, "steps": 0}
    orig = torch.Tensor.tolist

    def tolist(self):  # the runner's one host sync per step is a .tolist() of token ids
        if self.is_cuda:
            t = time.perf_counter()
            out = orig(self)
            waits["sync_s"] += time.perf_counter() - t
            waits["steps"] += 1
            return out
        return orig(self)

    torch.Tensor.tolist = tolist
    try:
        res = run_workload(engine, load, temperature=0.6).as_dict()
    finally:
        torch.Tensor.tolist = orig
    res.update(waits)
    res["host_s"] = res["elapsed_s"] - waits["sync_s"]
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", default="1,8")
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--skip", type=int, default=120)
    ap.add_argument("--window", type=int, default=24)
    ap.add_argument("--out", default=".")
    ap.add_argument("--async", dest="overlap", default="on", help="async scheduling: on or off")
    args = ap.parse_args()
    load = workloads.w1()
    summary = {"device": torch.cuda.get_device_name(), "runs": {}}
    for steps in [int(s) for s in args.steps.split(",")]:
        llm = make_llm(steps, args.block_size, async_scheduling=args.overlap == "on")
        entry = {"timed": timed_run(llm, load)}
        print(steps, json.dumps(entry["timed"]), flush=True)
        window = max(1, args.window // steps)
        entry["profile"] = kernel_window(llm, load, args.skip // steps, window)
        print(json.dumps(entry["profile"], indent=1), flush=True)
        summary["runs"][str(steps)] = entry
        del llm
        torch.cuda.empty_cache()
        Path(args.out, "profile_gpu_w1.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
