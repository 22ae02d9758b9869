"""Plot a ``pagedllm bench multiturn --out FILE`` result (tiers off vs on).

python3 benchmarks/multiturn_plot.py results/multiturn_cpu.json plots/multiturn_cpu.png
python3 benchmarks/multiturn_plot.py kv_tiers.json plots/multiturn_h200_8b.png qwen3-8b

The optional third argument picks one model's result from ``benchmarks/kv_tiers_gpu.py``'s JSON.
"""

from __future__ import annotations

import json
import sys


def main(src: str, dst: str, preset: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(src, encoding="utf-8") as f:
        result = json.load(f)
    if preset is not None:
        result = result["multiturn"][preset]
    runs = result["runs"]
    labels = [r["label"] for r in runs]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    panels = [
        ("TTFT, turns >= 2 (s)", [("p50", "ttft_p50_s"), ("p99", "ttft_p99_s")]),
        (
            "prompt tokens",
            [("computed", "prefill_tokens_computed"), ("from cache", "prefill_tokens_saved")],
        ),
        ("output tokens/s", [("", "output_tok_s")]),
    ]
    for ax, (title, series) in zip(axes, panels, strict=True):
        width = 0.8 / len(series)
        for k, (name, key) in enumerate(series):
            xs = [i + k * width for i in range(len(runs))]
            ax.bar(xs, [r[key] for r in runs], width, label=name or None)
        ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(runs))], labels)
        ax.set_title(title)
        if len(series) > 1:
            ax.legend()
    spec = runs[0]["spec"]
    fig.suptitle(
        f"{spec['num_conversations']} conversations x {spec['num_turns']} turns, "
        f"{runs[0]['num_gpu_blocks']} device blocks"
    )
    fig.tight_layout()
    fig.savefig(dst, dpi=120)


if __name__ == "__main__":
    main(*sys.argv[1:4])
