"""Throughput cost of a JSON-schema constraint on a batch of 32 (CPU or GPU), one run.

    PYTHONPATH=src python3 benchmarks/structured_outputs.py --out DIR [--smoke] [--model M]

Needs llguidance, which the GPU image lacks; it has no dependencies, so carry its wheel:
``pip download --no-deps --only-binary=:all: --python-version 3.12 --platform
manylinux_2_28_x86_64 -d wheels llguidance`` here, then on the GPU machine
``pip install --no-deps wheels/llguidance-*.whl`` before the run.
Correctness first: every constrained answer must parse as JSON and match the schema (checked
by hand for the schema's shape: jsonschema may be missing). Then, on the same engine:

- ``plain``: 32 unconstrained greedy requests, each forced (``ignore_eos``) to the length its
  constrained twin produced: the floor, the same tokens per request as the next row;
- ``json_all``: the 32 constrained requests (grammar mask every step, no multi-step rounds);
- ``json_one``: 1 constrained + 31 plain (what one JSON request costs the batch around it);
- ``mask_host``: the host time to build the 32-row bitmask per step, replayed on the tokens of
  ``json_all`` (the part of ``json_all``'s overhead spent in the grammar engine).

Reports output tokens/s (median of ``--repeats``) and the ratio to ``plain``; JSON into DIR.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 16},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "city": {"type": "string", "maxLength": 16},
        "pets": {"type": "array", "items": {"enum": ["cat", "dog", "fish"]}, "maxItems": 3},
    },
    "required": ["name", "age", "city", "pets"],
    "additionalProperties": False,
}


def _valid(text: str) -> bool:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return False
    return (
        isinstance(value, dict)
        and set(value) == {"name", "age", "city", "pets"}
        and isinstance(value["age"], int)
        and 0 <= value["age"] <= 120
        and all(p in ("cat", "dog", "fish") for p in value["pets"])
    )


def _timed(llm, prompts, params) -> tuple[float, list]:
    start = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    return time.perf_counter() - start, outs


def _interleaved(llm, prompts, variants: dict, repeats: int) -> dict[str, float]:
    """Median seconds per variant; the variants alternate within each repeat so that a
    machine whose load drifts (a shared CPU) weighs on all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, params in variants.items():
            times[name].append(_timed(llm, prompts, params)[0])
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--smoke", action="store_true", help="4 requests, CPU-sized")
    parser.add_argument("--model", default=None, help="default: the bundled SmolLM2-135M")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--dummy",
        action="store_true",
        help="random weights for --model (a config + tokenizer directory)",
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: the engine's)")
    args = parser.parse_args()
    try:
        import llguidance  # noqa: F401
    except ImportError:
        print("llguidance is missing: pip install --no-deps llguidance-*.whl (see the docstring)")
        return 2
    from pagedllm import LLM, SamplingParams
    from pagedllm.structured import StructuredOutputParams

    batch = 4 if args.smoke else args.batch
    repeats = 1 if args.smoke else args.repeats
    options: dict = {"load_format": "dummy"} if args.dummy else {}
    if args.device:
        options["device"] = args.device
    llm = LLM(args.model, max_model_len=1024, max_num_seqs=max(64, batch), **options)
    tok = llm.tokenizer
    prompts = [
        tok.apply_chat_template([{"role": "user", "content": f"Describe person {i} as JSON."}])
        for i in range(batch)
    ]
    constrained = SamplingParams(
        temperature=0, max_tokens=96, structured_output=StructuredOutputParams(json=SCHEMA)
    )
    llm.generate(prompts[:2], SamplingParams(max_tokens=4), use_tqdm=False)  # warm-up
    _, outs = _timed(llm, prompts, constrained)
    texts = [o.outputs[0].text for o in outs]
    bad = [t for t in texts if not _valid(t)]
    if bad:
        print(f"FAILED: {len(bad)} of {batch} answers do not match the schema: {bad[:2]}")
        return 1
    lengths = [len(o.outputs[0].token_ids) for o in outs]
    plain = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in lengths]
    variants = {"plain": plain, "json_all": constrained, "json_one": [constrained] + plain[1:]}
    rows = _interleaved(llm, prompts, variants, repeats)
    t_plain = rows["plain"]
    mask_s = _mask_host_time(llm, outs, constrained)
    tokens = sum(lengths)
    result = {
        "device": str(llm.engine.runner.device),
        "batch": batch,
        "output_tokens": tokens,
        "steps": max(lengths),
        "seconds": rows,
        "tok_per_s": {k: tokens / v for k, v in rows.items()},
        "mask_host_seconds_total": mask_s,
        "mask_host_ms_per_step": 1e3 * mask_s / max(lengths),
        "valid_answers": batch,
    }
    print(f"{'variant':10} {'s':>8} {'tok/s':>9} {'vs plain':>9}")
    for name, secs in rows.items():
        print(f"{name:10} {secs:8.3f} {tokens / secs:9.1f} {t_plain / secs:9.2f}")
    print(f"mask_host  {mask_s:8.3f} s total, {result['mask_host_ms_per_step']:.3f} ms/step")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "structured_outputs.json").write_text(json.dumps(result, indent=2))
    return 0


def _mask_host_time(llm, outs, params) -> float:
    """Replay the constrained tokens through fresh matchers, timing only the mask builds."""
    from pagedllm.structured.manager import StructuredOutputManager

    manager = StructuredOutputManager(llm.tokenizer, llm.engine.vocab_size)
    tokens = [o.outputs[0].token_ids for o in outs]
    ids = [f"r{i}" for i in range(len(tokens))]
    spec = params.structured_output
    manager.validate(spec)
    total = 0.0
    for step in range(max(len(t) for t in tokens)):
        live = [i for i, t in enumerate(tokens) if step < len(t)]
        start = time.perf_counter()
        manager.bitmask(
            [ids[i] for i in live], [spec] * len(live), [tokens[i][:step] for i in live]
        )
        total += time.perf_counter() - start
    return total


if __name__ == "__main__":
    sys.exit(main())
