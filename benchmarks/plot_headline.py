"""Draw ``plots/headline.png``: pagedllm next to the peers measured in the same runs.

Every number below is copied from ``benchmarks/RESULTS.md`` (the section is named next to it);
nothing here is estimated or taken from another project's publication. Run:
``python benchmarks/plot_headline.py`` (needs matplotlib: ``pip install -e ".[plot]"``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

PANELS = [
    (
        "W3: CPU, bundled SmolLM2-135M\n(2-core Xeon, output tok/s)",  # RESULTS: W3
        [("pagedllm (bf16)", 398.3), ("transformers, best (bf16, batch 32)", 214.5)],
        "{:.0f}",
    ),
    (
        "W1: H200, Qwen3-0.6B arch.\n(output tok/s)",  # RESULTS: W1, CLI defaults + peer, one run
        [("pagedllm (CLI defaults)", 21727), ("transformers generate_batch*", 346)],
        "{:,.0f}",
    ),
    (
        "K1: H200, paged decode attention\n(K/V read bandwidth, TB/s)",  # RESULTS: K1
        [
            ("pagedllm, paged (block 16)", 3.930),
            ("SDPA cuDNN, contiguous", 3.984),
            ("SDPA flash, contiguous", 2.580),
            ("gather pages + SDPA", 1.283),
        ],
        "{:.2f}",
    ),
    (
        "KV memory holding real tokens\n(1,000 ShareGPT-like requests, %)",  # RESULTS: memory
        [
            ("pagedllm, block 16", 98.6),
            ("contiguous, prompt + max_tokens", 62.4),
            ("contiguous, max_model_len", 23.0),
        ],
        "{:.1f}",
    ),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    here = Path(__file__).resolve().parent
    parser.add_argument("--out", default=str(here / "plots" / "headline.png"))
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 6.4))
    for ax, (title, rows, fmt) in zip(axes.flat, PANELS, strict=True):
        labels = [r[0] for r in rows][::-1]
        values = [r[1] for r in rows][::-1]
        colors = ["#b9c7d9"] * (len(rows) - 1) + ["#4c9f70"]
        bars = ax.barh(labels, values, color=colors)
        for bar, value in zip(bars, values, strict=True):
            ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, " " + fmt.format(value),
                    va="center", fontsize=9)  # fmt: skip
        ax.set_title(title, fontsize=10)
        ax.set_xlim(0, max(values) * 1.3)
        ax.tick_params(axis="y", labelsize=9)
        ax.spines[["top", "right"]].set_visible(False)
    fig.text(0.01, 0.01, "* transformers ran the first 32 W1 prompts x 256 tokens (it cannot "
             "finish all of W1 in one device call). The bars of each panel come from one run on one machine.",
             fontsize=8)  # fmt: skip
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
