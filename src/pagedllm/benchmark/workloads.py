"""The fixed benchmark workloads of DESIGN.md section 4, generated exactly as specified."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

PRESETS = {
    "qwen3-0.6b": "qwen3-0.6b.json",
    "qwen3-8b": "qwen3-8b.json",
    # the same shape with max_position_embeddings 131,072 and RoPE as configured (theta 1e6, no
    # YaRN scaling): for the 1 x 128k long-context workload on dummy weights, where only the
    # shapes matter (the real Qwen3 reaches 128k through YaRN, which changes no shape or cost)
    "qwen3-0.6b-128k": "qwen3-0.6b-128k.json",
    # hybrid KV cache study shapes (max_position_embeddings raised to 128k for the study)
    "gemma-3-1b": "gemma-3-1b.json",
    "gemma-2-2b": "gemma-2-2b.json",
    "mistral-7b": "mistral-7b.json",
}


def preset_path(name: str) -> str:
    """Path of a shipped HF-style config (for dummy weights), by preset name."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return str(Path(__file__).resolve().parent.parent / "presets" / PRESETS[name])


@dataclass(slots=True)
class Workload:
    """Prompts (token ids) and the number of tokens each must generate."""

    name: str
    prompts: list[list[int]]
    output_lens: list[int]

    @property
    def num_prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)

    @property
    def num_output_tokens(self) -> int:
        return sum(self.output_lens)

    def head(self, n: int) -> Workload:
        return Workload(f"{self.name}[:{n}]", self.prompts[:n], self.output_lens[:n])


def w1(num_requests: int = 256) -> Workload:
    """W1: nano-vllm's benchmark: 256 random prompts of 100-1024 tokens, 100-1024 out.

    All prompts are drawn first, then the output lengths (142,827 prompt and 133,966 output
    tokens for 256 requests).
    """
    random.seed(0)
    prompts = [
        [random.randint(0, 10000) for _ in range(random.randint(100, 1024))]
        for _ in range(num_requests)
    ]
    output_lens = [random.randint(100, 1024) for _ in range(num_requests)]
    return Workload("W1", prompts, output_lens)


def w2(num_requests: int = 256, prompt_len: int = 1024, output_len: int = 2048) -> Workload:
    """W2: 256 requests, 1024 random prompt tokens each, 2048 output tokens each."""
    rng = random.Random(0)
    prompts = [[rng.randint(0, 10000) for _ in range(prompt_len)] for _ in range(num_requests)]
    return Workload("W2", prompts, [output_len] * num_requests)


@dataclass(frozen=True, slots=True)
class LongSpec:
    """W-long (DESIGN.md): ``num`` prompts of ``length`` random ids, timed with 1 output token
    (prefill) and with ``new`` (decode), on ``preset`` (dummy weights)."""

    name: str
    num: int
    length: int
    new: int
    preset: str


LONG_WORKLOADS = {
    "long": LongSpec("W-long 8x32k", 8, 32_000, 128, "qwen3-0.6b"),
    "long-128k": LongSpec("W-long 1x128k", 1, 128_000, 128, "qwen3-0.6b-128k"),
}


def long_prompts(num: int, length: int, seed: int = 0) -> list[list[int]]:
    """``num`` prompts of ``length`` token ids uniform in [0, 10000); a new ``seed`` per timed
    run keeps runs from hitting each other's prefix cache."""
    rng = random.Random(seed)
    return [[rng.randint(0, 10000) for _ in range(length)] for _ in range(num)]


W3_TOPICS = [
    "Explain what a hash table is.",
    "Write a haiku about the sea.",
    "What is the capital of France?",
    "Give me three tips for learning to cook.",
    "Summarize the plot of Romeo and Juliet.",
    "How do vaccines work?",
    "Write a Python function that reverses a string.",
    "What causes the seasons on Earth?",
]


def w3_conversations(num: int = 32) -> list[list[dict[str, str]]]:
    """W3: 32 chat prompts of mixed length (tens to hundreds of tokens), deterministic."""
    rng = random.Random(3)
    filler = (
        "Here is some background you may use. The history of computing spans centuries, "
        "from mechanical calculators to modern processors with billions of transistors. "
    )
    conversations = []
    for i in range(num):
        question = W3_TOPICS[i % len(W3_TOPICS)]
        context = filler * rng.choice([0, 0, 1, 2, 4, 8, 12])
        conversations.append([{"role": "user", "content": f"{context}{question}"}])
    return conversations
